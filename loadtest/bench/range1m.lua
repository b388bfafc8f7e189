-- wrk script: GET a random 1 MiB range of a file of FILE_SIZE bytes.
-- Headers given with -H (e.g. Authorization) are kept: wrk.format replaces
-- wrk.headers with the table it is given, so they are copied into it.
local size = tonumber(os.getenv("FILE_SIZE"))
local len = 1048576
math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)
request = function()
  local off = math.random(0, size - len)
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["Range"] = "bytes=" .. off .. "-" .. (off + len - 1)
  return wrk.format("GET", nil, headers)
end
-- Count answers that are not 206, so a run of refusals is never read as throughput.
local bad = 0
response = function(status, headers, body)
  if status ~= 206 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("not-206: %d\n", bad))
end
