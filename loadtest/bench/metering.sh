#!/usr/bin/env bash
# The cost of metering and of tenant limits on hot-tier throughput, in one run:
#   - wrk, random 1 MiB ranges of a hot file, 32 connections: metering off,
#     metering on (anonymous), and metering on with a keyed tenant whose rate
#     and bandwidth limits are checked on every request but never bind.
#     Rounds are interleaved (off, on, tenant, off, on, ...) and the median
#     of each is compared, so drift on a shared machine hits all three alike.
#     The gateway's CPU (user + system, all threads) per GB served is taken
#     over the same rounds.
#   - valgrind --tool=callgrind, counting only the connection tasks (where a
#     request is parsed, identified, limited, answered and metered; not
#     timers or background threads): instructions per hot 1 MiB range
#     request for each variant, from the difference of a long and a short
#     run, so the warm-up request cancels out. These counts repeat to a few
#     instructions, so they resolve costs wrk cannot. The metering work
#     alone is also counted in isolation (plugin/examples/meter_cost.rs).
# Writes loadtest/bench/results/metering.md and prints it. Every step is
# bounded in time or request count.
#
#   bash loadtest/bench/metering.sh           full run (about 4 minutes plus build)
#   QUICK=1 bash loadtest/bench/metering.sh   smoke: 2 s rounds, fewer requests
# shellcheck source=loadtest/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dur="${BENCH_SECONDS:-8}"; [ -n "$quick" ] && dur=2
rounds=4; [ -n "$quick" ] && rounds=1
cg_short=20; cg_long=220; cg_reps=3; [ -n "$quick" ] && { cg_long=40; cg_reps=1; }

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
declare -A runs cpu
for r in $(seq "$rounds"); do
  for v in off on tenant; do
    hdr=(); [ "$v" = tenant ] && hdr=(-H "Authorization: Bearer $key")
    pid=$(cat "$work/$v.toml.pid"); t0=$(cpu_ticks "$pid")
    res=$(FILE_SIZE=$size wrk -t2 -c32 -d"${dur}s" "${hdr[@]}" -s loadtest/bench/range1m.lua "${base[$v]}$url_path" 2>/dev/null)
    t1=$(cpu_ticks "$pid")
    n=$(awk '/requests in/ {print $1}' <<<"$res")
    cpu[$v]="${cpu[$v]:-} $(python3 -c "print(f'{($t1 - $t0) / $(getconf CLK_TCK) / ($n / 1024):.3f}')")"
    bad=$(awk '/^not-206:/ {s+=$2} END {print s+0}' <<<"$res")
    [ "$bad" -eq 0 ] || { echo "$v: $bad answers were not 206; the measurement is void" >&2; exit 1; }
    mb=$(awk '/Transfer\/sec/ {print $2}' <<<"$res" |
      python3 -c "import sys,re; v=sys.stdin.read().strip(); m=re.match(r'([0-9.]+)([KMG]?B)',v); print(f'{float(m.group(1))*{\"B\":1e-6,\"KB\":1.024e-3,\"MB\":1.048576,\"GB\":1073.741824}[m.group(2)]:.0f}')")
    runs[$v]="${runs[$v]:-} $mb"
    say "   round $r $v: $mb MB/s, gateway CPU ${cpu[$v]##* } core-s/GiB"
  done
done
for v in off on tenant; do stop "$work/$v.toml"; done
median() { python3 -c "import statistics,sys; print(int(statistics.median(map(int, sys.argv[1:]))))" $1; }
fmedian() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" $1; }
m_off=$(median "${runs[off]}"); m_on=$(median "${runs[on]}"); m_ten=$(median "${runs[tenant]}")
c_off=$(fmedian "${cpu[off]}"); c_on=$(fmedian "${cpu[on]}"); c_ten=$(fmedian "${cpu[tenant]}")

say "callgrind: instructions per hot 1 MiB range request in the connection tasks, per variant"
# The per-connection task spawned by the accept loop (the pattern also takes
# in the accept loop's own select closures, so accepting each connection is
# counted too): everything a request costs in user space, and nothing that
# runs on a timer.
conn_task='shardgate::listener::serve::{{closure}}::{{closure}}'
cg() {  # $1 variant, $2 requests: instructions in connection tasks of a gateway run serving them
  local p cfg b hdr
  # No periodic commit during the run: it is a cost per second, not per request.
  p=$(free_port); cfg="$work/cg-$1-$2.toml"; COMMIT_INTERVAL=1h config "$p" "$1" > "$cfg"
  # One worker thread: fewer scheduling-dependent paths, so counts repeat.
  b=$(SG_ARGS="--threads 1" launch "$cfg" valgrind --tool=callgrind --toggle-collect="$conn_task" \
    --callgrind-out-file="$cfg.cg" -q)
  hdr=(); [ "$1" = tenant ] && hdr=(-H "Authorization: Bearer $key")
  curl -s -o /dev/null "${hdr[@]}" "$b$url_path"   # warm: the whole file into the hot tier
  for i in $(seq "$2"); do
    off=$(( (i * 7919 % 63) << 20 ))
    curl -s -o /dev/null "${hdr[@]}" -r "$off-$((off + (1 << 20) - 1))" "$b$url_path"
  done
  stop "$cfg"
  awk '/^summary:/ {print $2}' "$cfg.cg"
}
# How often a socket write is cut short depends on timing, so the counts move
# by about a thousand instructions per request between runs: the median of
# $cg_reps repetitions is taken, interleaved across variants.
declare -A per reps
for r in $(seq "$cg_reps"); do
  for v in off on tenant; do
    short=$(cg "$v" "$cg_short"); long=$(cg "$v" "$cg_long")
    n=$(( (long - short) / (cg_long - cg_short) ))
    say "   $v: $short instructions for $cg_short requests, $long for $cg_long: $n per request"
    # A renamed connection task would match nothing and count (nearly) zero.
    [ "$n" -gt 5000 ] || { echo "callgrind counted $n instructions per request: does '$conn_task' still name the connection task?" >&2; exit 1; }
    reps[$v]="${reps[$v]:-} $n"
  done
done
for v in off on tenant; do per[$v]=$(median "${reps[$v]}"); done
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
  echo "| gateway CPU (user + system) per GiB served, same rounds, median (core-s) | $c_off | $c_on | $c_ten | $(pct "$c_on" "$c_off") metering, $(pct "$c_ten" "$c_off") metering + tenant |"
  echo "| instructions per request in the connection tasks (callgrind, user space only, median of $cg_reps) | ${per[off]} | ${per[on]} | ${per[tenant]} | $(pct "${per[on]}" "${per[off]}") metering, $(pct "${per[tenant]}" "${per[off]}") metering + tenant |"
  echo "| metering work alone, isolated loop (callgrind) | | $per_meter per response | | |"
  echo
  echo "wrk rounds (MB/s): off${runs[off]}; on${runs[on]}; tenant${runs[tenant]}."
  echo "Gateway CPU per GiB: off${cpu[off]}; on${cpu[on]}; tenant${cpu[tenant]}."
  echo "Instructions per request: off${reps[off]}; on${reps[on]}; tenant${reps[tenant]}."
} > "$out/metering.md"
cat "$out/metering.md"
