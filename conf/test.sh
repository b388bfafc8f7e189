#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (Debian packages, the dev node, a Python venv with the real data loaders),
# starts one dev node for the run, then runs lint, Rust and Python tests,
# the fuzz smoke and the benchmark suite smoke.
#
#   bash conf/test.sh            everything
#   SKIP_LINT=1 bash conf/test.sh   skip fmt/clippy (also SKIP_FUZZ, SKIP_BENCH)
#   HEAVY=1 bash conf/test.sh       also the torch-heavy clients (several GB of wheels)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# A fresh clone gains nothing from incremental artifacts; they double the target size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cd "$root"
step() { printf '\n==> %s\n' "$*"; }

# Debian packages: b3sum (reference hashes), curl and aria2 (real clients),
# python3-venv. Installed only when missing.
need=()
command -v b3sum >/dev/null || need+=(b3sum)
command -v curl >/dev/null || need+=(curl)
command -v aria2c >/dev/null || need+=(aria2)
command -v mkfifo >/dev/null || need+=(coreutils)
command -v openssl >/dev/null || need+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# The embedded engine's hosts (plugin/tests/c_abi.rs) and the benchmark smoke.
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v valgrind >/dev/null || need+=(valgrind)
command -v go >/dev/null || need+=(golang-go)
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
# The dashboard test renders /dashboard in headless Chromium.
command -v chromium >/dev/null || need+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
# A fleet: three gateways behind HAProxy with conf/fleet/haproxy.cfg (test_fleet.py).
command -v haproxy >/dev/null || need+=(haproxy)
# promtool (Debian's prometheus package) checks and unit-tests conf/fleet's Prometheus files.
command -v promtool >/dev/null || need+=(prometheus)
# Sensitive datasets: the age CLI unwraps and makes key envelopes; SoftHSM2 is
# the PKCS#11 token the key-wrapping tests run against.
command -v age >/dev/null || need+=(age)
command -v softhsm2-util >/dev/null || need+=(softhsm2)
if [ "${#need[@]}" -gt 0 ]; then
  step "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

step "dev node (conf/dev-node)"
bash conf/dev-node/install.sh
node_state="$(mktemp -d)"
cleanup() { bash conf/dev-node/stop.sh "$node_state" >/dev/null 2>&1 || true; rm -rf "$node_state"; }
trap cleanup EXIT
bash conf/dev-node/start.sh "$node_state"
set -a
# shellcheck disable=SC1091
. "$node_state/env"
set +a

step "python venv (real loaders)"
venv="${SHARDGATE_VENV:-$root/.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r proxy/tests/clients/requirements.txt
# The Python client (clients/python), built from this checkout: maturin compiles
# its native module into the shared target directory.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" \
  "$venv/bin/pip" install -q --disable-pip-version-check ./clients/python

if [ -z "${SKIP_LINT:-}" ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  # The Python client's native module is a workspace of its own.
  cargo fmt --manifest-path clients/python/Cargo.toml -- --check
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" \
    cargo clippy --manifest-path clients/python/Cargo.toml --all-targets --quiet -- -D warnings
fi

step "cargo build (the C ABI library for the host tests, binaries for client tests)"
cargo build -p shardgate -p shardgate-proxy -p shardgate-loadtest --quiet
export SHARDGATE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/shardgate"

step "cargo test"
# A missing gcc, valgrind or go fails the embedded-host tests instead of skipping them.
SHARDGATE_REQUIRE_HOSTS=1 cargo test --workspace

if [ -z "${SKIP_FUZZ:-}" ]; then
  step "fuzz smoke (cargo fuzz, ${FUZZ_SECONDS:-15}s per target)"
  bash fuzz/run.sh
fi
step "python client tests"
"$venv/bin/python" -m pytest -q clients/python/tests
"$venv/bin/python" -m pytest -q proxy/tests/clients --ignore=proxy/tests/clients/test_s3_heavy.py \
  --ignore=proxy/tests/clients/test_python_client_heavy.py

# HEAVY=1: the torch-heavy clients (MosaicML streaming, s3torchconnector, and
# PyTorch's DataLoader over the Python client),
# whose wheels (torch with its CUDA libraries, several GB) do not fit CI's budget.
if [ -n "${HEAVY:-}" ]; then
  step "heavy clients (HEAVY=1: MosaicML streaming, s3torchconnector, DataLoader over shardgate://)"
  heavy_venv="${SHARDGATE_HEAVY_VENV:-$root/.venv-heavy}"
  [ -x "$heavy_venv/bin/python" ] || python3 -m venv "$heavy_venv"
  "$heavy_venv/bin/pip" install -q --disable-pip-version-check -r proxy/tests/clients/requirements-heavy.txt
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}" \
    "$heavy_venv/bin/pip" install -q --disable-pip-version-check ./clients/python
  HEAVY=1 "$heavy_venv/bin/python" -m pytest -v proxy/tests/clients/test_s3_heavy.py \
    proxy/tests/clients/test_python_client_heavy.py
fi

if [ -z "${SKIP_BENCH:-}" ]; then
  step "benchmark suite smoke (seconds per step, debug build; asserts nothing about speed)"
  QUICK=1 BENCH_PROFILE=debug bash loadtest/bench/suite.sh
fi
