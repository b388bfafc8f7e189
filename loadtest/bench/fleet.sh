#!/usr/bin/env bash
# A fleet behind HAProxy (conf/fleet/haproxy.cfg) on the Zipf workload, with
# the same total cache budget everywhere, all on loopback over a real dev
# node (its HTTP gateway is the origin):
#   - one gateway with the whole budget in its hot tier;
#   - three gateways with a third each, behind HAProxy hashing the path
#     consistently (the shipped configuration);
#   - the same three behind HAProxy round robin.
# For each: throughput cold and warm, the fleet's hot-tier hit ratio (summed
# over members), and upstream bytes (what the node served, summed over
# members) per dataset byte. Writes loadtest/bench/results/fleet.md.
#
#   bash loadtest/bench/fleet.sh           full run (about 3 minutes plus build)
#   QUICK=1 bash loadtest/bench/fleet.sh   smoke: small dataset, 2 s steps
#   BUDGET_PERCENT=60 ...                  a total cache budget of 60% of the dataset (default 120%)
#   BALANCE_FACTOR=150 ...                 consistent hashing with HAProxy's bounded load (hash-balance-factor)
# shellcheck source=loadtest/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dur="${BENCH_SECONDS:-20}"; [ -n "$quick" ] && dur=2
files_n=30; [ -n "$quick" ] && files_n=9
file_mib=4; [ -n "$quick" ] && file_mib=1
dataset_mib=$((files_n * file_mib))
# 120% of the dataset: enough for all of it on one gateway, or spread over three by the hash.
budget_mib=$((dataset_mib * 12 / 10))
[ -n "${BUDGET_PERCENT:-}" ] && budget_mib=$((dataset_mib * BUDGET_PERCENT / 100))
member_mib=$((budget_mib / 3))

need haproxy:haproxy curl:curl
build_release

say "dataset: $files_n files of $file_mib MiB ($dataset_mib MiB); cache budget $budget_mib MiB in total"
mkdir -p "$work/src"
for i in $(seq -w 1 "$files_n"); do head -c "$((file_mib << 20))" /dev/urandom > "$work/src/shard-$i.tar"; done
"$sg" keygen --out "$work/key" >/dev/null
"$sg" pack "$work/src" --name bench --version 1.0.0 --key "$work/key" --out "$work/rel" >/dev/null

say "dev node: start and publish"
node_state="$work/node"
bash conf/dev-node/start.sh "$node_state" >/dev/null
# shellcheck disable=SC1091
. "$node_state/env"
"$sg" publish "$work/rel" --node "$DEV_NODE_API" --api-prefix "$DEV_NODE_API_PREFIX" >/dev/null
gw_origin=$'[[origins]]\nkind = "btfs-gateway"\nurl = "'"$DEV_NODE_GATEWAY"$'"\npath_prefix = "/ipfs"'

zipf=(--pattern fsspec --zipf 1.1 --request-size 1MiB --seed 7 --workers 8)
load() {  # base -> "mb_per_s errors"
  "$lt" --quiet --json --duration "${dur}s" --base "$1" --release bench@1.0.0 "${zipf[@]}" > "$work/lt.json" || true
  python3 - "$work/lt.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['mb_per_s']:.0f} {sum(r['errors'].values())}")
PY
}
# Sum of a metric over members (%.0f: mawk's %d stops at 2^31).
sum_metric() {
  local m=$1; shift
  for b in "$@"; do curl -s "$b/metrics"; done | awk -v m="$m" '$1 ~ "^"m {s+=$NF} END {printf "%.0f\n", s}'
}
hit_ratio() {
  python3 -c "import sys; h,m=int(sys.argv[1]),int(sys.argv[2]); print(f'{h/(h+m):.2f}' if h+m else '-')" \
    "$(sum_metric shardgate_hot_tier_hits_total "$@")" "$(sum_metric shardgate_hot_tier_misses_total "$@")"
}
per_dataset() { python3 -c "import sys; print(f'{int(sys.argv[1])/(int(sys.argv[2])<<20):.2f}')" "$1" "$dataset_mib"; }

haproxy_up() {  # dir, port, balance (consistent|roundrobin), members...
  local dir=$1 port=$2 balance=$3; shift 3
  mkdir -p "$dir"
  if [ "$balance" = consistent ] && [ -n "${BALANCE_FACTOR:-}" ]; then
    sed -e "s/^\( *\)hash-type consistent\$/&\n\1hash-balance-factor $BALANCE_FACTOR/" conf/fleet/haproxy.cfg > "$dir/haproxy.cfg"
    grep -q hash-balance-factor "$dir/haproxy.cfg" || { echo "could not add hash-balance-factor" >&2; exit 1; }
  elif [ "$balance" = consistent ]; then
    cp conf/fleet/haproxy.cfg "$dir/haproxy.cfg"
  else
    sed -e 's/^\( *\)balance uri path-only$/\1balance roundrobin/' -e '/hash-type consistent/d' \
      conf/fleet/haproxy.cfg > "$dir/haproxy.cfg"
    grep -q 'balance roundrobin' "$dir/haproxy.cfg" || { echo "could not make the round-robin variant" >&2; exit 1; }
  fi
  SHARDGATE_LB_BIND="127.0.0.1:$port" SHARDGATE_MEMBER1="${1#http://}" SHARDGATE_MEMBER2="${2#http://}" \
    SHARDGATE_MEMBER3="${3#http://}" haproxy -db -f "$dir/haproxy.cfg" > "$dir/log" 2>&1 &
  echo $! > "$dir/haproxy.pid"
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && return 0; sleep 0.1; done
  echo "haproxy did not come up: $(tail -5 "$dir/log")" >&2
  exit 1
}
haproxy_down() { kill "$(cat "$1/haproxy.pid")" 2>/dev/null || true; wait "$(cat "$1/haproxy.pid")" 2>/dev/null || true; }

declare -A cold warm hit up errs
run_single() {
  gw_config "$(free_port)" "$budget_mib" "$gw_origin" > "$work/single.toml"
  local gw; gw=$(launch "$work/single.toml")
  read -r cold[single] e1 < <(load "$gw")
  read -r warm[single] e2 < <(load "$gw")
  hit[single]=$(hit_ratio "$gw")
  up[single]=$(sum_metric shardgate_origin_fetched_bytes_total "$gw")
  errs[single]=$((e1 + e2))
  stop "$work/single.toml"
}
run_fleet() {  # consistent|roundrobin
  local name=$1 members=() i
  for i in 1 2 3; do
    gw_config "$(free_port)" "$member_mib" "$gw_origin" > "$work/$name-$i.toml"
    members+=("$(launch "$work/$name-$i.toml")")
  done
  local port; port=$(free_port)
  haproxy_up "$work/lb-$name" "$port" "$name" "${members[@]}"
  read -r cold[$name] e1 < <(load "http://127.0.0.1:$port")
  read -r warm[$name] e2 < <(load "http://127.0.0.1:$port")
  hit[$name]=$(hit_ratio "${members[@]}")
  up[$name]=$(sum_metric shardgate_origin_fetched_bytes_total "${members[@]}")
  errs[$name]=$((e1 + e2))
  haproxy_down "$work/lb-$name"
  for i in 1 2 3; do stop "$work/$name-$i.toml"; done
}

say "one gateway, $budget_mib MiB hot tier"
run_single
say "three gateways of $member_mib MiB, HAProxy consistent hashing on the path"
run_fleet consistent
say "three gateways of $member_mib MiB, HAProxy round robin"
run_fleet roundrobin

errors=$((errs[single] + errs[consistent] + errs[roundrobin]))
out=$(results_dir)
{
  results_head "A fleet behind HAProxy (shardgate-loadtest)" fleet.sh "HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), dev node gateway as the origin; loopback"
  echo "Dataset: $files_n files of $file_mib MiB ($dataset_mib MiB), Zipf 1.1 fsspec 1 MiB ranges, 8 workers, ${dur}s per run, cold then warm. Cache budget $budget_mib MiB in total: one gateway with all of it, or three with $member_mib MiB each. Hit ratio and upstream bytes are summed over members after both runs; errors in all runs: $errors."
  echo
  echo "| setup | cold MB/s | warm MB/s | hot-tier hit ratio | upstream MiB | upstream per dataset byte |"
  echo "|---|---|---|---|---|---|"
  for s in single consistent roundrobin; do
    case $s in
      single) label="one gateway, $budget_mib MiB" ;;
      consistent) label="3 gateways x $member_mib MiB, consistent hashing (conf/fleet/haproxy.cfg)" ;;
      roundrobin) label="3 gateways x $member_mib MiB, round robin" ;;
    esac
    echo "| $label | ${cold[$s]} | ${warm[$s]} | ${hit[$s]} | $((up[$s] >> 20)) | $(per_dataset "${up[$s]}") |"
  done
  echo
  echo "Round robin over consistent hashing, upstream bytes: $(ratio "${up[roundrobin]}" "${up[consistent]}")."
} > "$out/fleet.md"
cat "$out/fleet.md"
[ "$errors" -eq 0 ] || { echo "shardgate-loadtest reported $errors errors" >&2; exit 1; }
