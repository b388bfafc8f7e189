#!/usr/bin/env bash
# The Python client (clients/python) against plain fsspec HTTP, through the
# same gateway, in one run on loopback:
#   1. sequential reads of a file in 1 MiB pieces, from the gateway's hot
#      tier: `shardgate://` (every 256 KiB chunk verified by the client, with
#      prefetch) vs fsspec's HTTPFileSystem (no verification, its default
#      5 MiB read-ahead blocks); rounds interleaved, medians compared, and
#      the client process's CPU seconds per GB read;
#   2. random 1 MiB ranges (`cat_file`, unaligned), the same offsets for
#      both: p50 and p99 latency and MB/s.
# Every byte read is compared with the source. Writes
# loadtest/bench/results/python_client.md and prints it. Bounded: fixed
# rounds and range counts.
#
#   bash loadtest/bench/python_client.sh            full run (256 MiB file, 5 rounds, 200 ranges a round)
#   QUICK=1 bash loadtest/bench/python_client.sh    smoke: 16 MiB, 1 round, 20 ranges
# The venv is SHARDGATE_VENV (default .venv, as conf/test.sh makes it); the
# client is installed into it from clients/python when missing.
# shellcheck source=loadtest/bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mib=256; [ -n "$quick" ] && mib=16
rounds=5; [ -n "$quick" ] && rounds=1
ranges=200; [ -n "$quick" ] && ranges=20
venv="${SHARDGATE_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import shardgate, fsspec.implementations.http' 2>/dev/null; then
  say "installing the Python client into $venv"
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" "$venv/bin/pip" install -q ./clients/python 'fsspec[http]'
fi
build_release

say "dataset: a ${mib} MiB file, 256 KiB chunks"
mkdir -p "$work/src"
head -c "$((mib << 20))" /dev/urandom > "$work/src/seq.bin"
"$sg" keygen --out "$work/key" >/dev/null
"$sg" pack "$work/src" --name pybench --version 1.0.0 --key "$work/key" --out "$work/rel" >/dev/null 2>&1
port=$(free_port)
cat > "$work/gw.toml" <<CFG
[server]
listen = "127.0.0.1:$port"
[trust]
keys = ["$work/key.pub"]
[[releases]]
manifest = "$work/rel/manifest.json"
[hot_tier]
capacity = "$((mib * 2))MiB"
$dir_origin
CFG
gw=$(launch "$work/gw.toml")
curl -sf -o /dev/null "$gw/v1/datasets/pybench/1.0.0/files/seq.bin"   # warm the hot tier

say "reading: $rounds interleaved rounds of a sequential read and $ranges random 1 MiB ranges per reader"
res=$("$venv/bin/python" loadtest/bench/python_client.py "$gw" pybench@1.0.0 seq.bin "$work/key.pub" \
  "$work/src/seq.bin" "$rounds" "$ranges")
stop "$work/gw.toml"
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]][sys.argv[3]])" "$res" "$1" "$2"; }
seq_h=$(field fsspec-http seq_median_mbs); seq_s=$(field shardgate seq_median_mbs)
say "   sequential: fsspec-http $seq_h MB/s, shardgate:// $seq_s MB/s $(ratio "$seq_s" "$seq_h")"

out=$(results_dir)
{
  results_head "Python client: verified shardgate:// vs plain fsspec HTTP" python_client.sh "Python $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])'), fsspec $("$venv/bin/python" -c 'import fsspec; print(fsspec.__version__)'), aiohttp; all on loopback"
  echo
  echo "One gateway, \`dir\` origin, the ${mib} MiB file in its hot tier. Both readers get the same gateway URL;"
  echo "\`shardgate://\` fetches the signed manifest and the chunk table and verifies every chunk itself."
  echo
  echo "| measure | fsspec HTTP | shardgate:// | ratio | target |"
  echo "|---|---|---|---|---|"
  echo "| sequential 1 MiB reads of ${mib} MiB (median of $rounds interleaved rounds) | $seq_h MB/s | $seq_s MB/s | $(ratio "$seq_s" "$seq_h") | >= 0.8x |"
  echo "| client CPU per GB read, sequential (median) | $(field fsspec-http seq_median_cpu) core-s/GB | $(field shardgate seq_median_cpu) core-s/GB | | |"
  echo "| random 1 MiB ranges, p50 ($((ranges * rounds)) reads) | $(field fsspec-http rand_p50_ms) ms | $(field shardgate rand_p50_ms) ms | | |"
  echo "| random 1 MiB ranges, p99 | $(field fsspec-http rand_p99_ms) ms | $(field shardgate rand_p99_ms) ms | | |"
  echo "| random 1 MiB ranges, MB/s (one reader, back to back) | $(field fsspec-http rand_mbs) MB/s | $(field shardgate rand_mbs) MB/s | $(ratio "$(field shardgate rand_mbs)" "$(field fsspec-http rand_mbs)") | |"
  echo
  echo "Per round sequential MB/s: fsspec-http $(field fsspec-http seq_mbs); shardgate $(field shardgate seq_mbs)."
} > "$out/python_client.md"
cat "$out/python_client.md"
