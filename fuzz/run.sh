#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target and runs each for
# FUZZ_SECONDS (default 15) from a scratch copy of its seeds in fuzz/seeds/.
# Exits non-zero if any target crashes (the input lands in fuzz/artifacts/).
#
#   bash fuzz/run.sh                         all targets, 15 s each
#   FUZZ_SECONDS=600 bash fuzz/run.sh        longer
#   bash fuzz/run.sh range_header            one target
#   FUZZ_SANITIZER=none bash fuzz/run.sh     without AddressSanitizer (faster)
#
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them (x86_64 Linux ships the ASan runtime).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-15}"
flags=(--debug-assertions --sanitizer "${FUZZ_SANITIZER:-address}")

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# Build first, so the timed runs below include no compilation.
if [ "$#" -gt 0 ]; then
  for t in "${targets[@]}"; do cargo fuzz build "${flags[@]}" "$t"; done
else
  cargo fuzz build "${flags[@]}"
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
summary=()
for t in "${targets[@]}"; do
  corpus="$scratch/$t"
  mkdir -p "$corpus"
  if [ -d "seeds/$t" ]; then cp seeds/"$t"/* "$corpus"/; fi
  log="$scratch/$t.log"
  rc=0
  cargo fuzz run "${flags[@]}" "$t" "$corpus" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)"
  secs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -1)"
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "---- $t FAILED (exit $rc); log tail:"
    tail -n 60 "$log"
    summary+=("$(printf '%-16s CRASH  see fuzz/artifacts/%s/' "$t" "$t")")
  else
    summary+=("$(printf '%-16s ok     %s execs in %s s (%s/s)' "$t" "${runs:-?}" "${secs:-?}" \
      "$(( ${runs:-0} / (${secs:-0} > 0 ? ${secs:-1} : 1) ))")")
  fi
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crash in ${failed[*]}" >&2
  exit 1
fi
