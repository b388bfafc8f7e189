#!/usr/bin/env bash
# A mixed soak: shardgate-loadtest's mixed pattern (webdataset, fsspec,
# parquet) with Zipf popularity against one gateway whose hot tier holds a
# quarter of the dataset, over the dir origin, for SOAK_MINUTES (default 10).
# Samples the gateway's RSS and open file descriptors every 10 s and fails if
# the load reported any error, or if RSS or descriptors grew between the
# second quarter of the run (after warm-up) and the last quarter by more
# than 10% (RSS) or 16 descriptors. Writes loadtest/bench/results/soak.md.
# Not part of CI (it runs for minutes by design).
#
#   bash loadtest/bench/soak.sh
#   SOAK_MINUTES=1 bash loadtest/bench/soak.sh
# shellcheck source=loadtest/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

minutes="${SOAK_MINUTES:-10}"
need curl:curl
build_release

say "dataset: 24 files of 16 MiB; hot tier 96 MiB"
mkdir -p "$work/src"
for i in $(seq -w 1 24); do head -c $((16 << 20)) /dev/urandom > "$work/src/shard-$i.tar"; done
"$sg" keygen --out "$work/key" >/dev/null
"$sg" pack "$work/src" --name soak --version 1.0.0 --key "$work/key" --out "$work/rel" >/dev/null
gw_config "$(free_port)" 96 "$dir_origin"$'\n[usage]\nledger = "'"$work/usage.redb"'"' > "$work/soak.toml"
gw=$(launch "$work/soak.toml")
gpid=$(cat "$work/soak.toml.pid")

say "soak: $minutes min, mixed pattern, 16 workers"
"$lt" --base "$gw" --release soak@1.0.0 --pattern mixed --zipf 1.1 --workers 16 \
  --duration "${minutes}m" --json --quiet > "$work/soak.json" &
load=$!
echo "seconds,rss_kib,fds" > "$work/samples.csv"
t0=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
  echo "$(( $(date +%s) - t0 )),$(awk '/VmRSS/ {print $2}' "/proc/$gpid/status"),$(ls "/proc/$gpid/fd" | wc -l)" >> "$work/samples.csv"
  printf '\r==> %3d s  RSS %s KiB' "$(( $(date +%s) - t0 ))" "$(awk '/VmRSS/ {print $2}' "/proc/$gpid/status")" >&2
  for _ in $(seq 20); do kill -0 "$load" 2>/dev/null || break; sleep 0.5; done
done
echo >&2
status=0; wait "$load" || status=$?
stop "$work/soak.toml"

out="loadtest/bench/results"
mkdir -p "$out"
rc=0
python3 - "$work/soak.json" "$work/samples.csv" "$minutes" "$status" "$(machine)" > "$out/soak.md" <<'PY' || rc=$?
import csv, json, sys, datetime
report, samples, minutes, status, machine = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
r = json.load(open(report))
rows = [(int(a), int(b), int(c)) for a, b, c in list(csv.reader(open(samples)))[1:]]
q = max(1, len(rows) // 4)
second, last = rows[q:2 * q] or rows, rows[-q:]
avg = lambda xs, i: sum(x[i] for x in xs) / len(xs)
rss_growth = avg(last, 1) / avg(second, 1) - 1
fd_growth = avg(last, 2) - avg(second, 2)
errors = sum(r["errors"].values())
ok = errors == 0 and status in (0,) and rss_growth <= 0.10 and fd_growth <= 16
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
print(f"### Soak ({minutes} min, mixed pattern, 16 workers): {'PASS' if ok else 'FAIL'}\n")
print(f"Run {now} on {machine}. Command: `SOAK_MINUTES={minutes} bash loadtest/bench/soak.sh`.\n")
print("| measure | value |\n|---|---|")
print(f"| requests, MB/s | {r['requests']}, {r['mb_per_s']:.0f} |")
print(f"| errors | {errors} {dict(r['errors']) if errors else ''} |")
print(f"| TTFB p50 / p99 / p99.9 | {r['ttfb']['p50_ms']:.1f} / {r['ttfb']['p99_ms']:.1f} / {r['ttfb']['p999_ms']:.1f} ms |")
hit = r.get("hot_tier_hit_ratio")
print(f"| hot-tier hit ratio | {'n/a' if hit is None else f'{hit:.3f}'} |")
print(f"| RSS second quarter -> last quarter (mean) | {avg(second,1)/1024:.0f} -> {avg(last,1)/1024:.0f} MiB ({rss_growth*100:+.1f}%) |")
print(f"| RSS max | {max(x[1] for x in rows)/1024:.0f} MiB |")
print(f"| open descriptors second quarter -> last quarter (mean) | {avg(second,2):.0f} -> {avg(last,2):.0f} |")
print(f"| samples | {len(rows)} (every 10 s) |")
sys.exit(0 if ok else 1)
PY
cat "$out/soak.md"
exit "$rc"
