#!/usr/bin/env bash
# What serving an encrypted release costs, side by side with the same bytes
# packed plain, all on loopback in one run:
#   1. hot-tier 1 MiB random range reads (wrk, 32 connections) of a 64 MiB
#      file packed encrypted (AES-256-GCM, the pack default) and packed plain,
#      both served by one gateway (two releases in one config) after a
#      warm-up read that fills the hot tier. The hot tier holds verified
#      ciphertext; the plaintext tier (hot_tier.plaintext_capacity, on by
#      default) holds decrypted segments. A second gateway with the plaintext
#      tier off (plaintext_capacity = 0) decrypts every chunk per request:
#      the two ways of holding hot encrypted data, measured side by side.
#      Rounds are interleaved (plain, encrypted, encrypted without the
#      plaintext tier, plain, ...) and the median
#      of each is compared, so drift on a shared machine hits both alike;
#      the gateway's CPU (user + system, all threads) per GB served is taken
#      over the same rounds.
#   2. cold streaming of a 256 MiB file from a `dir` origin, encrypted vs
#      plain, a fresh gateway per run (as gateway.sh does): best MB/s of 3,
#      and the gateway's CPU per GB served (median of 3); their difference
#      is what decryption costs per GB.
#   3. decryption alone, one thread, both schemes
#      (plugin/examples/decrypt_cost.rs: FileCipher::decrypt_segment over
#      1 GiB of 256 KiB chunks).
# The gateway unwraps the release's key envelope with an age identity
# (age-keygen); the envelope is registered over the gRPC admin API and kept
# in the gateway's registry, so each fresh gateway of step 2 has it.
# Writes loadtest/bench/results/encrypted.md and prints it. Bounded: every
# load step has a fixed duration or request count.
#
#   bash loadtest/bench/encrypted.sh            full run (about 4 minutes plus build)
#   QUICK=1 bash loadtest/bench/encrypted.sh    smoke: small files, 2 s steps
# shellcheck source=loadtest/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dur="${BENCH_SECONDS:-10}"; [ -n "$quick" ] && dur=2
rounds=3; [ -n "$quick" ] && rounds=1
cold_mib=256; [ -n "$quick" ] && cold_mib=16
cold_runs=3; [ -n "$quick" ] && cold_runs=1
hot_mib=64; [ -n "$quick" ] && hot_mib=8
cost_mib=1024; cost_rounds=2; [ -n "$quick" ] && { cost_mib=64; cost_rounds=1; }

need wrk:wrk curl:curl age-keygen:age
build_release
cargo build -q $([ "${BENCH_PROFILE:-release}" = debug ] || echo --release) -p shardgate --example decrypt_cost

say "dataset: ${hot_mib} MiB hot file, ${cold_mib} MiB cold file, packed plain (bench) and encrypted (bench-enc)"
mkdir -p "$work/src" "$work/rels"
head -c "$((hot_mib << 20))" /dev/urandom > "$work/src/hot.bin"
head -c "$((cold_mib << 20))" /dev/urandom > "$work/src/cold.bin"
"$sg" keygen --out "$work/key" >/dev/null
age-keygen -o "$work/gw.key" 2>/dev/null
recipient=$(awk '/^# public key:/ {print $NF; exit}' "$work/gw.key")
"$sg" pack "$work/src" --name bench --version 1.0.0 --key "$work/key" --out "$work/rels/plain" >/dev/null
# The key envelope goes beside the release: $work/rels/enc.keys.json.
"$sg" pack "$work/src" --name bench-enc --version 1.0.0 --key "$work/key" --out "$work/rels/enc" \
  --encrypt '*' --recipient "$recipient" >/dev/null 2>"$work/pack-enc.err"
grep -q 'encrypted 2 of 2 files' "$work/pack-enc.err" || { echo "pack --encrypt: $(cat "$work/pack-enc.err")" >&2; exit 1; }
envelope="$work/rels/enc.keys.json"
token=$("$sg" release token 2>"$work/token.err")
token_hash=$(grep -o 'blake3:[0-9a-f]\{64\}' "$work/token.err")
cat "$work"/rels/*/files/* > /dev/null  # page cache: the origin reads come from memory, as in gateway.sh

# A gateway config serving both releases from one `dir` origin: $1 port, $2 hot tier MiB,
# $3 plaintext tier MiB (default 256), $4 registry name (default registry).
enc_config() {
  cat <<CFG
[server]
listen = "127.0.0.1:$1"
max_connections = 8192
[trust]
keys = ["$work/key.pub"]
[[releases]]
manifest = "$work/rels/plain/manifest.json"
[[releases]]
manifest = "$work/rels/enc/manifest.json"
[hot_tier]
capacity = "$2MiB"
plaintext_capacity = "${3:-256}MiB"
[[origins]]
kind = "dir"
path = "$work/rels"
[keys]
age_identities = ["$work/gw.key"]
[grpc]
listen = "127.0.0.1:0"
admin_tokens = ["$token_hash"]
[registry]
path = "$work/${4:-registry}.redb"
CFG
}
url_of() {  # base variant file
  case $2 in plain) echo "$1/v1/datasets/bench/1.0.0/files/$3" ;; enc | ct) echo "$1/v1/datasets/bench-enc/1.0.0/files/$3" ;; esac
}
metric() {  # base name: the sum of a counter's series
  curl -s "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'
}

say "1. hot tier, random 1 MiB ranges, wrk -t2 -c32 -d${dur}s: ${rounds} interleaved rounds per variant"
# $1 config: starts a gateway, registers the envelope, warms both files; prints "base pid".
hot_gateway() {
  local g pid grpc
  g=$(launch "$1"); pid=$(cat "$1.pid")
  for _ in $(seq 100); do grep -q 'API listening' "$1.out" && break; sleep 0.1; done
  grpc=$(awk '/API listening/ {print $NF; exit}' "$1.out")
  [ -n "$grpc" ] || { echo "no gRPC listener: $(cat "$1.err")" >&2; exit 1; }
  "$sg" keys register "$envelope" --api "$grpc" --token "$token" 2> "$1.register" >/dev/null
  grep -q 'usable; the gateway decrypts' "$1.register" || { echo "keys register: $(cat "$1.register")" >&2; exit 1; }
  # Warm the hot tier with both files whole, checking the encrypted one reads as its plaintext.
  curl -sf -o /dev/null "$(url_of "$g" plain hot.bin)"
  curl -sf -o "$work/hot.enc.out" "$(url_of "$g" enc hot.bin)"
  cmp -s "$work/hot.enc.out" "$work/src/hot.bin" || { echo "the encrypted release did not read back as its plaintext" >&2; exit 1; }
  rm -f "$work/hot.enc.out"
  echo "$g $pid"
}
enc_config "$(free_port)" 1024 > "$work/hot.toml"
read -r gw gpid < <(hot_gateway "$work/hot.toml")
[ -n "$gw" ] || exit 1
enc_config "$(free_port)" 1024 0 registry-ct > "$work/hot-ct.toml"
read -r gw_ct gpid_ct < <(hot_gateway "$work/hot-ct.toml")
[ -n "$gw_ct" ] || exit 1
hot_size=$((hot_mib << 20))
misses0=$(metric "$gw" shardgate_hot_tier_misses_total)
misses0_ct=$(metric "$gw_ct" shardgate_hot_tier_misses_total)
declare -A mbs rps cpu
for r in $(seq "$rounds"); do
  for v in plain enc ct; do
    if [ "$v" = ct ]; then g=$gw_ct; pid=$gpid_ct; else g=$gw; pid=$gpid; fi
    res=$(wrk_ranges "$v" "$pid" "$hot_size" "$(url_of "$g" "$v" hot.bin)")
    read -r mb rq c <<<"$res"
    mbs[$v]="${mbs[$v]:-} $mb"; rps[$v]="${rps[$v]:-} $rq"; cpu[$v]="${cpu[$v]:-} $c"
    say "   round $r $v: $mb MB/s ($rq req/s)"
  done
done
misses=$(( $(metric "$gw" shardgate_hot_tier_misses_total) - misses0 + $(metric "$gw_ct" shardgate_hot_tier_misses_total) - misses0_ct ))
plain_hits=$(metric "$gw" shardgate_plain_tier_hits_total)
stop "$work/hot.toml"
stop "$work/hot-ct.toml"
# The round with the median MB/s, and its req/s.
pick() {  # variant -> "MB/s req/s" of its median round
  local m; m=$(median ${mbs[$1]})
  paste <(tr ' ' '\n' <<<"${mbs[$1]# }") <(tr ' ' '\n' <<<"${rps[$1]# }") | awk -v m="$m" '$1 == m {print $1, $2; exit}'
}
read -r hot_plain hot_plain_rps < <(pick plain)
read -r hot_enc hot_enc_rps < <(pick enc)
read -r hot_ct hot_ct_rps < <(pick ct)
hot_cpu_plain=$(median ${cpu[plain]}); hot_cpu_enc=$(median ${cpu[enc]}); hot_cpu_ct=$(median ${cpu[ct]})
say "   median: plain $hot_plain MB/s ($hot_plain_rps req/s), encrypted $hot_enc MB/s ($hot_enc_rps req/s) $(ratio "$hot_enc" "$hot_plain"), ciphertext-only $hot_ct MB/s $(ratio "$hot_ct" "$hot_plain")"
say "   gateway CPU s/GB plain${cpu[plain]}, encrypted${cpu[enc]}, ciphertext-only${cpu[ct]}; hot-tier misses during wrk: $misses; plaintext-tier hits: $plain_hits"

say "2. cold streaming, dir origin (${cold_mib} MiB twice per fresh gateway, hot tier 64 MiB, ${cold_runs} runs)"
cold_bytes=$((cold_mib << 20))
# MB/s of two whole downloads through a fresh gateway (config $1, variant $2)
# and the gateway's CPU seconds (user + system, all threads) per GB served.
# Twice, as in gateway.sh: the second read is as cold (the 64 MiB LRU hot
# tier holds only the file's tail, evicted before the reader gets there),
# and the CPU figure has twice the clock ticks.
cold_run() {
  local g pid t0 t1 out bytes u
  g=$(launch "$1"); pid=$(cat "$1.pid")
  u=$(url_of "$g" "$2" cold.bin)
  t0=$(cpu_ticks "$pid")
  out=$(curl -s -o /dev/null -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$u" "$u" |
    awk '$1 != 200 {bad = 1} {b += $2; t += $3} END {print (bad ? "bad" : "ok"), b, t}')
  t1=$(cpu_ticks "$pid")
  stop "$1"
  read -r ok bytes secs <<<"$out"
  [ "$ok" = ok ] && [ "$bytes" -eq $((2 * cold_bytes)) ] ||
    { echo "cold $2: answered $out, not 2 x $cold_bytes bytes; see $1.err" >&2; exit 1; }
  echo "$(mbps "$bytes" "$secs") $(per_gb "$(ticks_s $((t1 - t0)))" "$bytes")"
}
best_plain=0; best_enc=0; cold_cpu_plain=(); cold_cpu_enc=()
for run in $(seq "$cold_runs"); do
  p=$(free_port); enc_config "$p" 64 > "$work/cold-plain$run.toml"
  read -r rp c < <(cold_run "$work/cold-plain$run.toml" plain); [ -n "$rp" ] || exit 1; [ "$rp" -gt "$best_plain" ] && best_plain=$rp; cold_cpu_plain+=("$c")
  p=$(free_port); enc_config "$p" 64 > "$work/cold-enc$run.toml"
  read -r re c < <(cold_run "$work/cold-enc$run.toml" enc); [ -n "$re" ] || exit 1; [ "$re" -gt "$best_enc" ] && best_enc=$re; cold_cpu_enc+=("$c")
  say "   run $run: plain $rp MB/s (${cold_cpu_plain[-1]} CPU s/GB), encrypted $re MB/s (${cold_cpu_enc[-1]} CPU s/GB)"
done
cold_cpu_plain_med=$(median "${cold_cpu_plain[@]}"); cold_cpu_enc_med=$(median "${cold_cpu_enc[@]}")
decrypt_gb=$(python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$cold_cpu_enc_med" "$cold_cpu_plain_med")
decrypt_pct=$(python3 -c "import sys; print(f'{float(sys.argv[1]) * 100:.1f}')" "$decrypt_gb")
say "   best plain $best_plain MB/s, encrypted $best_enc MB/s; CPU s/GB plain ${cold_cpu_plain[*]}, encrypted ${cold_cpu_enc[*]}"
say "   decryption: $decrypt_gb core-s/GB (medians), $decrypt_pct% of a core per GB/s"

say "3. decryption alone, one thread (examples/decrypt_cost, ${cost_mib} MiB, best of ${cost_rounds})"
cost_table=$("$target_dir/examples/decrypt_cost" "$cost_mib" "$cost_rounds")
printf '%s\n' "$cost_table" >&2

out=$(results_dir)
{
  results_head "Encrypted releases: hot tier, cold path, decryption cost" encrypted.sh "wrk, curl, age; all on loopback"
  echo
  echo "Both releases are packed from the same source files and served by one gateway config; \`bench-enc\`"
  echo "is packed with \`--encrypt '*'\` (AES-256-GCM, 256 KiB chunks) and read as plaintext."
  echo
  echo "| measure | plain | encrypted | ratio encrypted/plain | target |"
  echo "|---|---|---|---|---|"
  echo "| hot, random 1 MiB ranges of a ${hot_mib} MiB file, wrk -t2 -c32 ${dur}s (median of $rounds interleaved rounds): plaintext tier on (default) | $hot_plain MB/s ($hot_plain_rps req/s) | $hot_enc MB/s ($hot_enc_rps req/s) | $(ratio "$hot_enc" "$hot_plain") | >= 0.8x |"
  echo "| the same, plaintext tier off (\`plaintext_capacity = 0\`: the hot tier holds ciphertext only, every read decrypts) | $hot_plain MB/s | $hot_ct MB/s ($hot_ct_rps req/s) | $(ratio "$hot_ct" "$hot_plain") | |"
  echo "| gateway CPU per GB served, hot (median of $rounds): plain; encrypted with / without the plaintext tier | $hot_cpu_plain core-s/GB | $hot_cpu_enc / $hot_cpu_ct core-s/GB | | |"
  echo "| cold, dir origin (${cold_mib} MiB twice per fresh gateway, best of $cold_runs) | $best_plain MB/s | $best_enc MB/s | $(ratio "$best_enc" "$best_plain") | |"
  echo "| gateway CPU per GB served cold (median of $cold_runs) | $cold_cpu_plain_med core-s/GB | $cold_cpu_enc_med core-s/GB | decryption $decrypt_gb core-s/GB = $decrypt_pct% of a core per GB/s | |"
  echo
  echo "Hot-tier misses during the wrk rounds: $misses; plaintext-tier hits: $plain_hits. Per run, gateway CPU s/GB cold: plain ${cold_cpu_plain[*]}; encrypted ${cold_cpu_enc[*]}; hot: plain${cpu[plain]}; encrypted${cpu[enc]}; ciphertext-only${cpu[ct]}."
  echo
  echo "Decryption alone, one thread (\`cargo run --release -p shardgate --example decrypt_cost -- $cost_mib $cost_rounds\`: \`FileCipher::decrypt_segment\` over ${cost_mib} MiB of 256 KiB chunks, best of $cost_rounds, thread CPU time):"
  echo
  echo "$cost_table"
} > "$out/encrypted.md"
cat "$out/encrypted.md"
