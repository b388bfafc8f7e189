#!/usr/bin/env bash
# The S3 API against the HTTP route it shares its path with, in one run on loopback:
#   1. hot-tier 1 MiB random range reads (wrk -t2 -c32, range1m.lua) of a
#      64 MiB file through `/v1/datasets/...` and through `/s3/...` (unsigned
#      GetObject of a public dataset) on one gateway, after a warm-up read;
#      rounds interleaved (http, s3, http, ...), medians compared.
#   2. ListObjectsV2 over a release of 100,000 files: every page of 1,000,
#      walked with continuation tokens by a keep-alive client, the time of
#      each page from request to last byte; p50, p99 and max over the pages
#      of three full walks; and `delimiter=/` at the release root, which rolls
#      all 100,000 keys into 100 common prefixes in one page.
# Writes loadtest/bench/results/s3.md and prints it. Bounded: wrk steps have
# a fixed duration, the walks a fixed page count.
#
#   bash loadtest/bench/s3.sh            full run (about 2 minutes plus build and pack)
#   QUICK=1 bash loadtest/bench/s3.sh    smoke: 8 MiB file, 5,000 files, 2 s steps
# shellcheck source=loadtest/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dur="${BENCH_SECONDS:-10}"; [ -n "$quick" ] && dur=2
rounds=3; [ -n "$quick" ] && rounds=1
hot_mib=64; [ -n "$quick" ] && hot_mib=8
files=100000; [ -n "$quick" ] && files=5000
walks=3; [ -n "$quick" ] && walks=1

need wrk:wrk curl:curl
build_release

say "dataset: a ${hot_mib} MiB file (release bench) and ${files} files of 16 to 64 bytes in 100 directories (release many)"
mkdir -p "$work/src/hot" "$work/rels"
head -c "$((hot_mib << 20))" /dev/urandom > "$work/src/hot/hot.bin"
python3 - "$work/src/many" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"part-{i % 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"sample-{i:07d}.json"), "w") as f:
        f.write('{"i": %d}\n' % i + "x" * (i % 48))
PY
"$sg" keygen --out "$work/key" >/dev/null
"$sg" pack "$work/src/hot" --name bench --version 1.0.0 --key "$work/key" --out "$work/rels/bench" >/dev/null 2>&1
t0=$(date +%s.%N)
"$sg" pack "$work/src/many" --name many --version 1.0.0 --key "$work/key" --out "$work/rels/many" >/dev/null 2>&1
pack_s=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
say "   packed $files files in $pack_s s"
cat "$work"/rels/bench/files/* > /dev/null

port=$(free_port)
cat > "$work/gw.toml" <<CFG
[server]
listen = "127.0.0.1:$port"
max_connections = 8192
[trust]
keys = ["$work/key.pub"]
[[releases]]
manifest = "$work/rels/bench/manifest.json"
[[releases]]
manifest = "$work/rels/many/manifest.json"
[hot_tier]
capacity = "1024MiB"
[[origins]]
kind = "dir"
path = "$work/rels/bench"
[[origins]]
kind = "dir"
path = "$work/rels/many"
CFG
gw=$(launch "$work/gw.toml"); gpid=$(cat "$work/gw.toml.pid")
http_url="$gw/v1/datasets/bench/1.0.0/files/hot.bin"
s3_url="$gw/s3/bench/1.0.0/hot.bin"
curl -sf -o "$work/warm" "$http_url"
cmp -s "$work/warm" "$work/src/hot/hot.bin" || { echo "warm-up read differs from the source" >&2; exit 1; }
curl -sf -o "$work/warm" "$s3_url"
cmp -s "$work/warm" "$work/src/hot/hot.bin" || { echo "S3 GetObject differs from the source" >&2; exit 1; }

say "1. hot tier, random 1 MiB ranges, wrk -t2 -c32 -d${dur}s: ${rounds} interleaved rounds per route"
declare -A mbs rps cpu
for r in $(seq "$rounds"); do
  for v in http s3; do
    if [ "$v" = http ]; then u=$http_url; else u=$s3_url; fi
    res=$(wrk_ranges "$v" "$gpid" $((hot_mib << 20)) "$u")
    read -r mb rq c <<<"$res"
    mbs[$v]="${mbs[$v]:-} $mb"; rps[$v]="${rps[$v]:-} $rq"; cpu[$v]="${cpu[$v]:-} $c"
    say "   round $r $v: $mb MB/s ($rq req/s)"
  done
done
pick() {
  local m; m=$(median ${mbs[$1]})
  paste <(tr ' ' '\n' <<<"${mbs[$1]# }") <(tr ' ' '\n' <<<"${rps[$1]# }") | awk -v m="$m" '$1 == m {print $1, $2; exit}'
}
read -r hot_http hot_http_rps < <(pick http)
read -r hot_s3 hot_s3_rps < <(pick s3)
cpu_http=$(median ${cpu[http]}); cpu_s3=$(median ${cpu[s3]})
say "   median: http $hot_http MB/s, s3 $hot_s3 MB/s $(ratio "$hot_s3" "$hot_http")"

say "2. ListObjectsV2 over $files files: $walks full walks of pages of 1,000, with and without delimiter"
list_stats() {  # base delimiter -> "pages p50_ms p99_ms max_ms keys"
  python3 - "$1" "$2" "$walks" "$files" <<'PY'
import http.client, sys, time, urllib.parse, re
base, delim, walks, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
u = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
times, keys = [], 0
for _ in range(walks):
    token, keys = None, 0
    for _page in range(files // 1000 + 50):
        q = {"list-type": "2", "prefix": "1.0.0/"}
        if delim == "/":
            q["delimiter"] = "/"
        if token:
            q["continuation-token"] = token
        path = "/s3/many?" + urllib.parse.urlencode(q)
        t0 = time.perf_counter()
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t0)
        assert r.status == 200, (r.status, body[:300])
        keys += body.count(b"<Key>") + body.count(b"<CommonPrefixes>")
        m = re.search(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>", body)
        if not m:
            break
        token = m.group(1).decode()
want = files if delim != "/" else 100  # the part-NNN/ directories, rolled up
assert keys == want, f"listed {keys} keys, expected {want}"
times.sort()
pct = lambda p: times[min(len(times) - 1, int(p * len(times)))] * 1000
print(len(times), f"{pct(0.5):.2f}", f"{pct(0.99):.2f}", f"{times[-1] * 1000:.2f}", keys)
PY
}
read -r pages p50 p99 pmax nkeys < <(list_stats "$gw" none)
read -r dpages dp50 dp99 dpmax dkeys < <(list_stats "$gw" /)
say "   whole release: $pages pages, p50 $p50 ms, p99 $p99 ms, max $pmax ms ($nkeys keys per walk)"
say "   delimiter=/ at the release root: $dpages pages, p50 $dp50 ms, p99 $dp99 ms ($dkeys common prefixes per walk)"
rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$gpid/status")
stop "$work/gw.toml"

out=$(results_dir)
{
  results_head "S3 API: GetObject vs the HTTP route, ListObjectsV2 pages" s3.sh "wrk, curl, a Python http.client walker; all on loopback"
  echo
  echo "One gateway, \`dir\` origins, no tenants (every dataset public, so wrk sends unsigned GetObject)."
  echo
  echo "| measure | HTTP route | S3 | ratio S3/HTTP | target |"
  echo "|---|---|---|---|---|"
  echo "| hot, random 1 MiB ranges of a ${hot_mib} MiB file, wrk -t2 -c32 ${dur}s (median of $rounds interleaved rounds) | $hot_http MB/s ($hot_http_rps req/s) | $hot_s3 MB/s ($hot_s3_rps req/s) | $(ratio "$hot_s3" "$hot_http") | >= 0.95x |"
  echo "| gateway CPU per GB served (median of $rounds) | $cpu_http core-s/GB | $cpu_s3 core-s/GB | | |"
  echo
  echo "| ListObjectsV2, $files files (packed in $pack_s s) | pages | p50 | p99 | max | target |"
  echo "|---|---|---|---|---|---|"
  echo "| whole release, pages of 1,000, $walks walks | $pages | $p50 ms | $p99 ms | $pmax ms | p99 < 50 ms |"
  echo "| \`delimiter=/\` at the release root ($dkeys common prefixes over all $files keys), $walks walks | $dpages | $dp50 ms | $dp99 ms | $dpmax ms | |"
  echo
  echo "Gateway RSS after the run: $rss MiB. Per round MB/s: http${mbs[http]}; s3${mbs[s3]}."
} > "$out/s3.md"
cat "$out/s3.md"
