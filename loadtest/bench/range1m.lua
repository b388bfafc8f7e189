-- wrk script: GET a random 1 MiB range of a file of FILE_SIZE bytes.
local size = tonumber(os.getenv("FILE_SIZE"))
local len = 1048576
math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
request = function()
  local off = math.random(0, size - len)
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. off .. "-" .. (off + len - 1) })
end
