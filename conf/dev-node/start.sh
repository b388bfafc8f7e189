#!/usr/bin/env bash
# Starts a fresh, offline js-ipfs dev node on free loopback ports.
# Usage: start.sh [STATE_DIR]   (default: $SHARDGATE_DEV_NODE_HOME/run)
# Writes STATE_DIR/env (DEV_NODE_* lines) and STATE_DIR/daemon.log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"

state_dir="${1:-$DEV_NODE_HOME/run}"
timeout="${DEV_NODE_START_TIMEOUT:-90}"

dev_node_is_installed || "$here/install.sh"

mkdir -p "$state_dir"
state_dir="$(cd "$state_dir" && pwd)"
repo="$state_dir/repo"
log="$state_dir/daemon.log"
env_file="$state_dir/env"
pid_file="$state_dir/daemon.pid"

# A node left running from this state dir is stopped before its repo is wiped.
"$here/stop.sh" "$state_dir"
rm -rf "$repo" "$env_file" "$pid_file" "$log"

dev_node_log "creating repo $repo"
IPFS_PATH="$repo" dev_node_jsipfs init --empty-repo >"$state_dir/init.log" 2>&1 ||
  { tail -n 30 "$state_dir/init.log" >&2; dev_node_die "jsipfs init failed"; }

# Three distinct free loopback TCP ports: API, Gateway, RPC.
read -r api_port gw_port rpc_port < <(node -e '
  const net = require("net");
  const servers = [0, 1, 2].map(() => net.createServer());
  Promise.all(servers.map(s => new Promise((ok, ko) => {
    s.once("error", ko); s.listen(0, "127.0.0.1", () => ok(s.address().port));
  }))).then(ports => { console.log(ports.join(" ")); servers.forEach(s => s.close()); });
')
[ -n "${rpc_port:-}" ] || dev_node_die "could not pick free ports"

node -e '
  const fs = require("fs");
  const [file, api, gw, rpc] = process.argv.slice(1);
  const c = JSON.parse(fs.readFileSync(file, "utf8"));
  c.Addresses = c.Addresses || {};
  c.Addresses.Swarm = [];
  c.Addresses.Delegates = [];
  c.Addresses.API = `/ip4/127.0.0.1/tcp/${api}`;
  c.Addresses.Gateway = `/ip4/127.0.0.1/tcp/${gw}`;
  c.Addresses.RPC = `/ip4/127.0.0.1/tcp/${rpc}`;
  c.Bootstrap = [];
  c.Discovery = c.Discovery || {};
  c.Discovery.MDNS = Object.assign({}, c.Discovery.MDNS, { Enabled: false });
  c.Discovery.webRTCStar = Object.assign({}, c.Discovery.webRTCStar, { Enabled: false });
  fs.writeFileSync(file, JSON.stringify(c, null, 2) + "\n");
' "$repo/config" "$api_port" "$gw_port" "$rpc_port"

api="http://127.0.0.1:$api_port"
gateway="http://127.0.0.1:$gw_port"

dev_node_log "starting daemon (API $api, gateway $gateway), log $log"
started=$SECONDS
# setsid detaches the daemon from the caller's terminal and process group.
detach=()
command -v setsid >/dev/null 2>&1 && detach=(setsid)
IPFS_PATH="$repo" \
  NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }--require $DEV_NODE_POLYFILL" \
  nohup ${detach[@]+"${detach[@]}"} node "$DEV_NODE_CLI" daemon --offline </dev/null >"$log" 2>&1 &
pid=$!
echo "$pid" >"$pid_file"

fail() {
  dev_node_log "daemon failed to start: $1"
  dev_node_log "last lines of $log:"
  tail -n 40 "$log" >&2 || true
  "$here/stop.sh" "$state_dir" >/dev/null 2>&1 || true
  exit 1
}

api_answers() {
  node -e '
    fetch(process.argv[1], { method: "POST", signal: AbortSignal.timeout(3000) })
      .then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1));
  ' "$api/api/v0/id" 2>/dev/null
}

while :; do
  kill -0 "$pid" 2>/dev/null || fail "process $pid exited"
  if grep -q 'Daemon is ready' "$log" 2>/dev/null && api_answers; then
    break
  fi
  [ $((SECONDS - started)) -lt "$timeout" ] || fail "not ready after ${timeout} s"
  sleep 0.5
done

cat >"$env_file" <<ENV
DEV_NODE_API=$api
DEV_NODE_API_PREFIX=/api/v0
DEV_NODE_GATEWAY=$gateway
DEV_NODE_GATEWAY_PREFIX=/ipfs
DEV_NODE_PID=$pid
DEV_NODE_REPO=$repo
ENV

dev_node_log "ready in $((SECONDS - started)) s; env written to $env_file"
cat "$env_file"
