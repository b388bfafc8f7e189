#!/usr/bin/env bash
# The benchmark suite in one command: every comparison, side by side with its
# peer in the same run, on loopback. Each part writes its table to
# loadtest/bench/results/; a full run then rewrites the generated section of
# BENCHMARKS.md from them.
#   gateway.sh   hot 1 MiB ranges vs nginx sendfile (wrk); cold verified
#                streaming (dir and btfs-api origins) vs the origin read
#                directly, verification on and off; RSS with 256 streams
#   metering.sh  metering on vs off, tenants with limits vs none (wrk, callgrind)
#   caching.sh   whole files vs nginx sendfile; Zipf workload with a 20% cache
#                vs nginx proxy_cache+slice (hit ratio, upstream bytes); manifest
#                p99 TTFB under bulk load; concurrent cold readers of one file
#   encrypted.sh an encrypted release vs the same bytes packed plain: hot 1 MiB
#                ranges (wrk), cold streaming and the gateway's CPU per GB
#                (decryption cost), FileCipher::decrypt_segment alone
#   s3.sh        S3 GetObject vs the HTTP route (hot 1 MiB ranges, wrk);
#                ListObjectsV2 pages over a release of 100,000 files
#   python_client.sh  verified `shardgate://` reads (the Python client) vs
#                plain fsspec HTTP through the same gateway: sequential MB/s,
#                random 1 MiB range latency
#   fleet.sh     three gateways behind HAProxy, consistent hashing vs round
#                robin, vs one gateway, one cache budget (Zipf): hit ratio,
#                upstream bytes, throughput
#
#   bash loadtest/bench/suite.sh             full run (about 20 minutes plus the release build)
#   QUICK=1 bash loadtest/bench/suite.sh     smoke of every part (seconds per step; not a measurement)
#   QUICK=1 BENCH_PROFILE=debug bash ...     the smoke on the debug build (what CI runs)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
started=$(date +%s)
for part in gateway metering caching encrypted s3 python_client fleet; do
  printf '\n######## %s\n' "$part" >&2
  bash "$here/$part.sh"
done
if [ -z "${QUICK:-}" ]; then
  python3 - "$root/BENCHMARKS.md" "$here/results" <<'PY'
import sys, pathlib
doc, results = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
begin, end = "<!-- suite:begin -->", "<!-- suite:end -->"
text = doc.read_text()
if begin not in text or end not in text:
    sys.exit(f"{doc}: no {begin} ... {end} section to regenerate")
body = "\n\n".join((results / f"{p}.md").read_text().strip() for p in ("gateway", "metering", "caching", "encrypted", "s3", "python_client", "fleet"))
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
doc.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
print(f"rewrote the generated section of {doc}")
PY
fi
echo "suite finished in $(( $(date +%s) - started )) s" >&2
