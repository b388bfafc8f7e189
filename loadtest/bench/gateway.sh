#!/usr/bin/env bash
# Side-by-side gateway benchmarks, all on loopback in one run:
#   1. hot-tier 1 MiB random range reads (wrk, 32 connections) vs nginx sendfile
#   2. cold verified streaming of a 256 MiB file vs reading the origin directly
#      (dir origin vs nginx from page cache; btfs-api origin vs the node's own cat),
#      and what verification costs: the gateway's CPU per GB with it on and off,
#      and chunk hashing alone (plugin/examples/verify_cost.rs)
#   3. peak RSS with 256 concurrent whole-file streams vs the hot-tier budget
# Writes loadtest/bench/results/gateway.md and prints it. Bounded: every load
# step has a fixed duration or request count.
#
#   bash loadtest/bench/gateway.sh            full run (about 3 minutes plus build)
#   QUICK=1 bash loadtest/bench/gateway.sh    smoke: small files, 2 s steps
# shellcheck source=loadtest/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dur="${BENCH_SECONDS:-10}"; [ -n "$quick" ] && dur=2
cold_mib=256; [ -n "$quick" ] && cold_mib=16
hot_mib=64; [ -n "$quick" ] && hot_mib=8
rss_streams=256; [ -n "$quick" ] && rss_streams=16
budget_mib=256; [ -n "$quick" ] && budget_mib=16

need nginx:nginx-light wrk:wrk curl:curl
build_release

say "dataset: ${hot_mib} MiB hot file, ${cold_mib} MiB cold file, 8 x ${hot_mib} MiB for the RSS run"
mkdir -p "$work/src"
head -c "$((hot_mib << 20))" /dev/urandom > "$work/src/hot.bin"
head -c "$((cold_mib << 20))" /dev/urandom > "$work/src/cold.bin"
for i in 0 1 2 3 4 5 6 7; do head -c "$((hot_mib << 20))" /dev/urandom > "$work/src/stream-$i.bin"; done
"$sg" keygen --out "$work/key" >/dev/null
"$sg" pack "$work/src" --name bench --version 1.0.0 --key "$work/key" --out "$work/rel" >/dev/null
files="$work/rel/files"

# nginx: the same bytes from page cache with sendfile.
ngx_port=$(free_port)
start_nginx "$work/nginx" "server { listen 127.0.0.1:$ngx_port; root $files; }"
cat "$files"/* > /dev/null  # page cache
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ngx_port/hot.bin")
[ "$code" = 200 ] || { echo "nginx answered $code; see $work/nginx/error.log" >&2; exit 1; }


curl_rate() {  # URL [extra curl args]: MB/s of a whole download
  local out; out=$(curl -s -o /dev/null -w '%{size_download} %{time_total}' "$@")
  mbps ${out% *} ${out#* }
}
wrk_rate() {  # URL file_size: MB/s and requests/s from wrk with random 1 MiB ranges
  FILE_SIZE=$2 wrk -t2 -c32 -d"${dur}s" -s loadtest/bench/range1m.lua "$1" 2>/dev/null |
    awk '/Requests\/sec/ {r=$2} /Transfer\/sec/ {t=$2} END {print r, t}'
}

say "1. hot tier vs nginx sendfile: random 1 MiB ranges, wrk -t2 -c32 -d${dur}s"
gw_port=$(free_port)
gw_config "$gw_port" 1024 "$dir_origin" > "$work/hot.toml"
gw=$(launch "$work/hot.toml")
curl -s -o /dev/null "$gw/v1/datasets/bench/1.0.0/files/hot.bin"   # warm the hot tier
hot_size=$((hot_mib << 20))
read -r ngx_rps ngx_tr < <(wrk_rate "http://127.0.0.1:$ngx_port/hot.bin" $hot_size)
read -r sg_rps sg_tr < <(wrk_rate "$gw/v1/datasets/bench/1.0.0/files/hot.bin" $hot_size)
ngx_hot=$(to_mb "$ngx_tr"); sg_hot=$(to_mb "$sg_tr")
hits=$(curl -s "$gw/metrics" | awk '/^shardgate_hot_tier_hits_total/ {print $2}')
say "   nginx $ngx_hot MB/s ($ngx_rps req/s), shardgate $sg_hot MB/s ($sg_rps req/s), hot hits $hits"
stop "$work/hot.toml"

say "2a. cold verified streaming, dir origin (${cold_mib} MiB, hot tier 64 MiB, fresh gateway per run)"
cold_url_path="/v1/datasets/bench/1.0.0/files/cold.bin"
best_ngx=0; best_sg=0; best_sg_nv=0
cpu_on=(); cpu_off=(); faults_on=()
# MB/s of a whole download through a fresh gateway (config $1), the
# gateway's CPU seconds (user + system, all threads) per GB it served, and
# its minor page faults per GB (mostly fresh pages the kernel had to zero).
cold_run() {
  local g pid t0 t1 f0 f1 out bytes
  g=$(launch "$1"); pid=$(cat "$1.pid")
  t0=$(cpu_ticks "$pid"); f0=$(minor_faults "$pid")
  # Twice: the second read is as cold (the 64 MiB LRU hot tier holds only the
  # file's tail, which is evicted before the reader gets there), and the CPU
  # figure has twice the clock ticks.
  out=$(curl -s -o /dev/null -o /dev/null -w '%{size_download} %{time_total}\n' "$g$cold_url_path" "$g$cold_url_path" |
    awk '{b += $1; t += $2} END {print b, t}')
  t1=$(cpu_ticks "$pid"); f1=$(minor_faults "$pid")
  stop "$1"
  bytes=${out% *}
  echo "$(mbps "$bytes" "${out#* }") $(per_gb "$(ticks_s $((t1 - t0)))" "$bytes") $(per_gb $((f1 - f0)) "$bytes" 0)"
}
for run in 1 2 3 4 5; do
  r=$(curl_rate "http://127.0.0.1:$ngx_port/cold.bin"); [ "$r" -gt "$best_ngx" ] && best_ngx=$r
  p=$(free_port); gw_config "$p" 64 "$dir_origin" > "$work/cold$run.toml"
  read -r r c f < <(cold_run "$work/cold$run.toml"); [ "$r" -gt "$best_sg" ] && best_sg=$r; cpu_on+=("$c"); faults_on+=("$f")
  p=$(free_port); { gw_config "$p" 64 "$dir_origin"; printf '[fetch]\nverify = false\n'; } > "$work/coldnv$run.toml"
  read -r r c _ < <(cold_run "$work/coldnv$run.toml"); [ "$r" -gt "$best_sg_nv" ] && best_sg_nv=$r; cpu_off+=("$c")
done
cpu_on_med=$(median "${cpu_on[@]}"); cpu_off_med=$(median "${cpu_off[@]}"); faults_med=$(median "${faults_on[@]}")
verify_pct=$(python3 -c "import sys; print(f'{(float(sys.argv[1]) - float(sys.argv[2])) * 100:.1f}')" "$cpu_on_med" "$cpu_off_med")
say "   nginx $best_ngx MB/s, shardgate verified $best_sg MB/s, unverified $best_sg_nv MB/s (best of 5)"
say "   gateway CPU s/GB verified ${cpu_on[*]}, unverified ${cpu_off[*]}: verification $verify_pct% of a core per GB/s"
say "   gateway page faults per GB served, verified: ${faults_on[*]}"
cargo build -q $([ "${BENCH_PROFILE:-release}" = debug ] || echo --release) -p shardgate --example verify_cost
hash_line=$("$target_dir/examples/verify_cost" "$([ -n "$quick" ] && echo 64 || echo 512)" 3)
say "   $hash_line"
read -r hash_warm hash_warm_pct hash_cold hash_cold_pct < <(echo "$hash_line" |
  sed -E 's/.*just read ([0-9.]+) GB\/s, ([0-9.]+)%.*from memory ([0-9.]+) GB\/s, ([0-9.]+)%.*/\1 \2 \3 \4/')

node_line="not run (set BENCH_NODE=1)"
if [ -n "${BENCH_NODE:-1}" ] && [ -z "$quick" ]; then
  say "2b. cold verified streaming, btfs-api origin (the dev node) vs the node's own cat"
  node_state="$work/node"
  bash conf/dev-node/start.sh "$node_state" >/dev/null
  # shellcheck disable=SC1091
  . "$node_state/env"
  "$sg" publish "$work/rel" --node "$DEV_NODE_API" --api-prefix "$DEV_NODE_API_PREFIX" >/dev/null
  cid=$(python3 -c "import json,sys; p=json.load(open(sys.argv[1])); m=json.load(open(sys.argv[2])); f=[x for x in m['files'] if x['path']=='cold.bin'][0]; print(p['blobs'][f['blake3']]['cid'])" "$work/rel/placement.json" "$work/rel/manifest.json")
  node_origin=$'[[origins]]\nkind = "btfs-api"\nurl = "'"$DEV_NODE_API"$'"\napi_prefix = "'"$DEV_NODE_API_PREFIX"'"'
  best_node=0; best_sgn=0; node_cpu=(); node_cpu_sg=(); gw_cpu=()
  cold_bytes=$((cold_mib << 20))
  for run in 1 2 3; do
    n0=$(cpu_ticks "$DEV_NODE_PID")
    r=$(curl_rate -X POST "$DEV_NODE_API$DEV_NODE_API_PREFIX/cat?arg=$cid"); [ "$r" -gt "$best_node" ] && best_node=$r
    node_cpu+=("$(per_gb "$(ticks_s $(($(cpu_ticks "$DEV_NODE_PID") - n0)))" $cold_bytes 2)")
    p=$(free_port); gw_config "$p" 64 "$node_origin" > "$work/node$run.toml"
    g=$(launch "$work/node$run.toml"); gpid=$(cat "$work/node$run.toml.pid")
    n0=$(cpu_ticks "$DEV_NODE_PID"); g0=$(cpu_ticks "$gpid")
    r=$(curl_rate "$g$cold_url_path"); [ "$r" -gt "$best_sgn" ] && best_sgn=$r
    node_cpu_sg+=("$(per_gb "$(ticks_s $(($(cpu_ticks "$DEV_NODE_PID") - n0)))" $cold_bytes 2)")
    gw_cpu+=("$(per_gb "$(ticks_s $(($(cpu_ticks "$gpid") - g0)))" $cold_bytes 2)")
    stop "$work/node$run.toml"
  done
  # CPU per GB (median): the node alone, and the node and the gateway when the gateway reads it.
  node_line="| cold, btfs-api origin (${cold_mib} MiB), best of 3 | node \`cat\` $best_node MB/s (node $(median "${node_cpu[@]}") core-s/GB) | shardgate $best_sgn MB/s (node $(median "${node_cpu_sg[@]}") + gateway $(median "${gw_cpu[@]}") core-s/GB) | $(ratio "$best_sgn" "$best_node") | >= 0.95x |"
  say "   node $best_node MB/s, shardgate $best_sgn MB/s; CPU s/GB node alone ${node_cpu[*]}, node via gateway ${node_cpu_sg[*]}, gateway ${gw_cpu[*]}"
fi

say "3. RSS with $rss_streams concurrent whole-file streams (hot tier ${budget_mib} MiB, 8 files of ${hot_mib} MiB)"
p=$(free_port); gw_config "$p" "$budget_mib" "$dir_origin" > "$work/rss.toml"
g=$(launch "$work/rss.toml")
gpid=$(cat "$work/rss.toml.pid")
rss_pids=()
for i in $(seq 0 $((rss_streams - 1))); do
  curl -s -o /dev/null --limit-rate 20M "$g/v1/datasets/bench/1.0.0/files/stream-$((i % 8)).bin" &
  rss_pids+=($!)
done
peak=0
for _ in $(seq $((dur * 4))); do
  cur=$(awk '/VmRSS/ {print $2}' "/proc/$gpid/status")
  [ "$cur" -gt "$peak" ] && peak=$cur
  sleep 0.25
done
for p in "${rss_pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${rss_pids[@]}" 2>/dev/null || true
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$gpid/status")
stop "$work/rss.toml"
peak_mib=$((hwm / 1024))
say "   peak RSS $peak_mib MiB (budget $budget_mib MiB + 64 MiB)"

out=$(results_dir)
{
  results_head "Gateway: hot tier, cold path, RSS" gateway.sh "nginx $(nginx_version), wrk, curl; all on loopback"
  echo
  echo "| measure | peer | shardgate | ratio | target |"
  echo "|---|---|---|---|---|"
  echo "| hot tier, random 1 MiB ranges, wrk -c32 ${dur}s | nginx sendfile $ngx_hot MB/s ($ngx_rps req/s) | $sg_hot MB/s ($sg_rps req/s) | $(ratio "$sg_hot" "$ngx_hot") | >= 1.0x |"
  echo "| cold, dir origin (${cold_mib} MiB, verified) | nginx from page cache $best_ngx MB/s | $best_sg MB/s | $(ratio "$best_sg" "$best_ngx") | >= 0.95x |"
  echo "| cold, dir origin (${cold_mib} MiB, verify off) | nginx from page cache $best_ngx MB/s | $best_sg_nv MB/s | $(ratio "$best_sg_nv" "$best_ngx") | (cost of verification) |"
  echo "| verification, gateway CPU per GB served cold (median of 5, verified minus unverified) | | $cpu_on_med - $cpu_off_med core-s/GB = $verify_pct% of a core per GB/s | | <= 15% |"
  echo "| gateway page faults per GB served cold (dir origin, verified, median of 5) | | $faults_med | | |"
  echo "| verification alone, one thread (\`examples/verify_cost\`): 256 KiB chunks just read / from memory | | $hash_warm GB/s = $hash_warm_pct% / $hash_cold GB/s = $hash_cold_pct% of a core per GB/s | | <= 15% |"
  case "$node_line" in \|*) echo "$node_line" ;; esac
  echo "| peak RSS, $rss_streams streams | budget ${budget_mib} MiB + 64 MiB | $peak_mib MiB | | <= $((budget_mib + 64)) MiB |"
} > "$out/gateway.md"
cat "$out/gateway.md"
