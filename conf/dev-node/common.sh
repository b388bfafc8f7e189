# Shared settings for the dev-node scripts; sourced, not executed.
# shellcheck shell=bash

DEV_NODE_IPFS_VERSION="0.66.1"
DEV_NODE_HOME="${SHARDGATE_DEV_NODE_HOME:-$HOME/.cache/shardgate/dev-node}"
DEV_NODE_NPM_DIR="$DEV_NODE_HOME/npm"
DEV_NODE_POLYFILL="$DEV_NODE_NPM_DIR/polyfill.cjs"
DEV_NODE_CLI="$DEV_NODE_NPM_DIR/node_modules/ipfs/src/cli.js"

dev_node_log() { printf '[dev-node] %s\n' "$*" >&2; }
dev_node_die() { printf '[dev-node] error: %s\n' "$*" >&2; exit 1; }

# Prints the installed ipfs version, or nothing.
dev_node_installed_version() {
  local pkg="$DEV_NODE_NPM_DIR/node_modules/ipfs/package.json"
  [ -f "$pkg" ] || return 0
  command -v node >/dev/null 2>&1 || return 0
  node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' "$pkg" 2>/dev/null || true
}

dev_node_is_installed() {
  [ "$(dev_node_installed_version)" = "$DEV_NODE_IPFS_VERSION" ] &&
    [ -f "$DEV_NODE_CLI" ] && [ -f "$DEV_NODE_POLYFILL" ]
}

# Runs the js-ipfs CLI with the polyfill preloaded.
dev_node_jsipfs() {
  NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }--require $DEV_NODE_POLYFILL" \
    node "$DEV_NODE_CLI" "$@"
}

# True if PID is alive and looks like the js-ipfs daemon (it retitles itself
# to "ipfs", so /proc/PID/cmdline holds "ipfs" rather than the node command).
dev_node_pid_is_ours() {
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  [ -r "/proc/$pid/cmdline" ] || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'ipfs'
}
