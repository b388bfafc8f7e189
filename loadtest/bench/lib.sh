# Helpers shared by the benchmark scripts (sourced, not run).
# Sets: root, quick, work (a temporary directory removed on exit), sg (the
# shardgate binary), lt (the shardgate-loadtest binary), after build_release.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
quick="${QUICK:-}"

say() { printf '==> %s\n' "$*" >&2; }

# Installs the Debian packages whose commands are missing: need CMD:PKG ...
need() {
  local missing=() spec
  for spec in "$@"; do command -v "${spec%%:*}" >/dev/null || missing+=("${spec#*:}"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# BENCH_PROFILE=debug uses the debug build (for smoke runs in CI, where the
# tests have built it already); figures only come from release builds.
build_release() {
  local profile="${BENCH_PROFILE:-release}"
  say "cargo build ($profile)"
  if [ "$profile" = debug ]; then
    cargo build -q -p shardgate-proxy -p shardgate-loadtest
  else
    cargo build --release -q -p shardgate-proxy -p shardgate-loadtest
  fi
  target_dir="${CARGO_TARGET_DIR:-$root/target}/$profile"
  sg="$target_dir/shardgate"
  lt="$target_dir/shardgate-loadtest"
}

work="$(mktemp -d)"
chmod 755 "$work"   # nginx workers read files as an unprivileged user
cleanup() {
  local f
  for f in "$work"/*.pid "$work"/*/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  [ -n "${node_state:-}" ] && bash conf/dev-node/stop.sh "$node_state" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # user + system clock ticks of a process, all threads
minor_faults() { awk '{print $10}' "/proc/$1/stat"; }      # page faults served without I/O (fresh or reclaimed pages), all threads
per_gb() { python3 -c "import sys; print(f'{float(sys.argv[1]) / (int(sys.argv[2]) / 1e9):.${3:-3}f}')" "$1" "$2"; }  # amount bytes [decimals]
ticks_s() { python3 -c "import sys,os; print(int(sys.argv[1]) / os.sysconf('SC_CLK_TCK'))" "$1"; }  # clock ticks -> seconds
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

# Starts `shardgate serve --config $1` (optionally under a command prefix:
# launch CFG valgrind ...) and prints its base URL once it listens.
launch() {
  local cfg=$1; shift
  "$@" "$sg" serve --config "$cfg" ${SG_ARGS:-} > "$cfg.out" 2> "$cfg.err" &
  echo $! > "$cfg.pid"
  for _ in $(seq 600); do
    grep -q listening "$cfg.out" 2>/dev/null && break
    kill -0 "$(cat "$cfg.pid")" 2>/dev/null || { echo "gateway failed to start: $(cat "$cfg.err")" >&2; exit 1; }
    sleep 0.1
  done
  awk '/listening/ {print $NF; exit}' "$cfg.out"
}

# SIGTERM, then waits for the gateway to go (it is not this shell's child:
# launch runs in $(...)).
stop() {
  local pid; pid=$(cat "$1.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# The release under $work/rel as a `dir` origin (for gw_config).
dir_origin=$'[[origins]]\nkind = "dir"\npath = "'"$work/rel"'"'

# A gateway config: $1 port, $2 hot tier MiB, $3 origins (and any further) TOML.
gw_config() {
  cat <<CFG
[server]
listen = "127.0.0.1:$1"
max_connections = 8192
[trust]
keys = ["$work/key.pub"]
[[releases]]
manifest = "$work/rel/manifest.json"
[hot_tier]
capacity = "$2MiB"
$3
CFG
}

# nginx with config body $2 (inside http {}) in directory $1; waits until it answers.
start_nginx() {
  local dir=$1 body=$2
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<NGX
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  $body
}
NGX
  nginx -c "$dir/nginx.conf" -p "$dir"
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
to_mb() {  # wrk's "123.45MB" -> MB
  python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([0-9.]+)([KMG]?B)',v); n=float(m.group(1)); print(f'{n*{\"B\":1e-6,\"KB\":1.024e-3,\"MB\":1.048576,\"GB\":1073.741824}[m.group(2)]:.0f}')" "$1"
}
# One wrk round (-t2 -c32, $dur seconds) of random 1 MiB ranges (range1m.lua):
# wrk_ranges LABEL PID FILE_SIZE URL prints "MB/s req/s gateway-CPU-s/GB" for
# the gateway process PID. An answer other than 206 voids the run (exit 1).
wrk_ranges() {
  local t0 t1 res bad n
  t0=$(cpu_ticks "$2")
  res=$(FILE_SIZE=$3 wrk -t2 -c32 -d"${dur}s" -s loadtest/bench/range1m.lua "$4" 2>/dev/null)
  t1=$(cpu_ticks "$2")
  bad=$(awk '/^not-206:/ {s+=$2} END {print s+0}' <<<"$res")
  [ "$bad" -eq 0 ] || { echo "$1: $bad answers were not 206; the measurement is void" >&2; return 1; }
  n=$(awk '/requests in/ {print $1}' <<<"$res")
  echo "$(to_mb "$(awk '/Transfer\/sec/ {print $2}' <<<"$res")") $(awk '/Requests\/sec/ {print $2}' <<<"$res") $(per_gb "$(ticks_s $((t1 - t0)))" $((n << 20)))"
}
mbps() {  # bytes seconds
  python3 -c "import sys; print(f'{int(sys.argv[1])/float(sys.argv[2])/1e6:.0f}')" "$1" "$2"
}
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}x' if b else 'n/a')" "$1" "$2"; }
machine() {
  echo "$(nproc) cores, $(awk '/model name/ {sub(/.*: /,""); print; exit}' /proc/cpuinfo), $(free -g | awk '/Mem/ {print $2}') GiB RAM"
}

# Where a script writes its results table (smoke runs leave the results alone).
results_dir() {
  local out="loadtest/bench/results"; [ -n "$quick" ] && out="$work"
  mkdir -p "$out"; echo "$out"
}
# The head of a results table: results_head TITLE SCRIPT TOOLS.
results_head() {
  echo "### $1$( [ -n "$quick" ] && echo ' — QUICK smoke, not a measurement')"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(machine)."
  echo "Command: \`bash loadtest/bench/$2\` (${BENCH_PROFILE:-release} build; $3)."
}
nginx_version() { nginx -v 2>&1 | sed 's/.*\///'; }
