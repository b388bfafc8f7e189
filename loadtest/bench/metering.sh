#!/usr/bin/env bash
# The cost of metering and of tenant limits on hot-tier throughput, in one run:
#   - wrk, random 1 MiB ranges of a hot file, 32 connections: metering off,
#     metering on (anonymous), and metering on with a keyed tenant whose rate
#     and bandwidth limits are checked on every request but never bind.
#     Rounds are interleaved (off, on, tenant, off, on, ...) and the median
#     of each is compared, so drift on a shared machine hits all three alike.
#   - valgrind --tool=callgrind: instructions of the metering work per
#     response, in isolation (plugin/examples/meter_cost.rs), against the
#     instructions of a whole hot 1 MiB range request through the gateway with
#     metering off; each from the difference of a long and a short run, so
#     start-up cancels out. Instruction counts do not depend on load, though
#     the whole-gateway count moves a few percent between runs (the hot
#     tier's housekeeping runs on a timer).
# Writes loadtest/bench/results/metering.md and prints it. Every step is
# bounded in time or request count.
#
#   bash loadtest/bench/metering.sh           full run (about 4 minutes plus build)
#   QUICK=1 bash loadtest/bench/metering.sh   smoke: 2 s rounds, fewer requests
# shellcheck source=loadtest/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dur="${BENCH_SECONDS:-8}"; [ -n "$quick" ] && dur=2
rounds=4; [ -n "$quick" ] && rounds=1
cg_short=20; cg_long=220; [ -n "$quick" ] && cg_long=40

need wrk:wrk curl:curl valgrind:valgrind
build_release
cargo build -q $([ "${BENCH_PROFILE:-release}" = debug ] || echo --release) -p shardgate --example meter_cost

mkdir -p "$work/src"
head -c $((64 << 20)) /dev/urandom > "$work/src/hot.bin"
"$sg" keygen --out "$work/key" >/dev/null
"$sg" pack "$work/src" --name bench --version 1.0.0 --key "$work/key" --out "$work/rel" >/dev/null
key=$("$sg" tenant key --tenant bench 2>"$work/key.err")
key_hash=$(grep -o 'blake3:[0-9a-f]*' "$work/key.err")

config() {  # $1 port, $2 variant: off | on | tenant
  gw_config "$1" 256 "$dir_origin"
  cat <<CFG
[usage]
enabled = $([ "$2" = off ] && echo false || echo true)
ledger = "$work/usage-$2-$1.redb"
commit_interval = "${COMMIT_INTERVAL:-1s}"
CFG
  if [ "$2" = tenant ]; then
    cat <<CFG
[[tenants]]
id = "bench"
keys = ["$key_hash"]
datasets = ["bench"]
request_rate = 1000000.0
bandwidth = "2GiB"
CFG
  fi
}
url_path="/v1/datasets/bench/1.0.0/files/hot.bin"
size=$((64 << 20))

say "wrk: random 1 MiB ranges, -t2 -c32, ${rounds} interleaved rounds of ${dur}s per variant"
declare -A base
for v in off on tenant; do
  p=$(free_port); config "$p" "$v" > "$work/$v.toml"
  base[$v]=$(launch "$work/$v.toml")
  curl -s -o /dev/null -H "Authorization: Bearer $key" "${base[$v]}$url_path"   # warm the hot tier
done
declare -A runs
for r in $(seq "$rounds"); do
  for v in off on tenant; do
    hdr=(); [ "$v" = tenant ] && hdr=(-H "Authorization: Bearer $key")
    res=$(FILE_SIZE=$size wrk -t2 -c32 -d"${dur}s" "${hdr[@]}" -s loadtest/bench/range1m.lua "${base[$v]}$url_path" 2>/dev/null)
    bad=$(awk '/^not-206:/ {s+=$2} END {print s+0}' <<<"$res")
    [ "$bad" -eq 0 ] || { echo "$v: $bad answers were not 206; the measurement is void" >&2; exit 1; }
    mb=$(awk '/Transfer\/sec/ {print $2}' <<<"$res" |
      python3 -c "import sys,re; v=sys.stdin.read().strip(); m=re.match(r'([0-9.]+)([KMG]?B)',v); print(f'{float(m.group(1))*{\"B\":1e-6,\"KB\":1.024e-3,\"MB\":1.048576,\"GB\":1073.741824}[m.group(2)]:.0f}')")
    runs[$v]="${runs[$v]:-} $mb"
    say "   round $r $v: $mb MB/s"
  done
done
for v in off on tenant; do stop "$work/$v.toml"; done
median() { python3 -c "import statistics,sys; print(int(statistics.median(map(int, sys.argv[1:]))))" $1; }
m_off=$(median "${runs[off]}"); m_on=$(median "${runs[on]}"); m_ten=$(median "${runs[tenant]}")

say "callgrind: instructions per hot 1 MiB range request, metering off vs on"
cg() {  # $1 variant, $2 requests: total instructions of a gateway run serving them
  local p cfg b
  # No periodic commit during the run: it is a cost per second, not per
  # request, and under valgrind a second holds only a few requests.
  p=$(free_port); cfg="$work/cg-$1-$2.toml"; COMMIT_INTERVAL=1h config "$p" "$1" > "$cfg"
  # One worker thread: fewer scheduling-dependent paths, so counts repeat.
  b=$(SG_ARGS="--threads 1" launch "$cfg" valgrind --tool=callgrind --callgrind-out-file="$cfg.cg" -q)
  curl -s -o /dev/null "$b$url_path"   # warm: the whole file into the hot tier
  for i in $(seq "$2"); do
    off=$(( (i * 7919 % 63) << 20 ))
    curl -s -o /dev/null -r "$off-$((off + (1 << 20) - 1))" "$b$url_path"
  done
  stop "$cfg"
  awk '/^summary:/ {print $2}' "$cfg.cg"
}
short=$(cg off "$cg_short"); long=$(cg off "$cg_long")
per_request=$(( (long - short) / (cg_long - cg_short) ))
say "   whole gateway, metering off: $short instructions for $cg_short requests, $long for $cg_long: $per_request per request"
mc() {  # $1 responses: instructions of the isolated metering loop
  valgrind --tool=callgrind --callgrind-out-file="$work/mc-$1.cg" -q "$target_dir/examples/meter_cost" "$1" >/dev/null
  awk '/^summary:/ {print $2}' "$work/mc-$1.cg"
}
m1=$(mc 1000); m2=$(mc 11000)
per_meter=$(( (m2 - m1) / 10000 ))
say "   metering alone: $per_meter instructions per response"

pct() { python3 -c "print(f'{($1/$2 - 1) * 100:+.1f}%')"; }
out=$(results_dir)
{
  results_head "Metering and limits (target: at most 3%)" metering.sh "wrk, curl, valgrind; all on loopback"
  echo
  echo "| measure | metering off | metering on | on, keyed tenant with limits | cost |"
  echo "|---|---|---|---|---|"
  echo "| hot 1 MiB ranges, wrk -c32, median of $rounds x ${dur}s (MB/s) | $m_off | $m_on | $m_ten | $(pct "$m_on" "$m_off") metering, $(pct "$m_ten" "$m_off") metering + tenant |"
  echo "| instructions per hot 1 MiB range request (callgrind) | $per_request (whole gateway) | + $per_meter (metering work, isolated) | | $(python3 -c "print(f'+{$per_meter / $per_request * 100:.1f}%')") |"
  echo
  echo "wrk rounds (MB/s): off${runs[off]}; on${runs[on]}; tenant${runs[tenant]}."
} > "$out/metering.md"
cat "$out/metering.md"
