#!/usr/bin/env bash
# Installs the js-ipfs dev node (npm package ipfs, pinned version) into
# ${SHARDGATE_DEV_NODE_HOME:-$HOME/.cache/shardgate/dev-node}/npm. Idempotent.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"

command -v node >/dev/null 2>&1 || dev_node_die "node not found in PATH (Node.js 18+ with npm is required)"
command -v npm >/dev/null 2>&1 || dev_node_die "npm not found in PATH (install Node.js with npm, e.g. 'apt-get install nodejs npm')"

mkdir -p "$DEV_NODE_NPM_DIR"

# Node < 22 lacks Promise.withResolvers, which js-ipfs dependencies call.
dev_node_log "writing polyfill $DEV_NODE_POLYFILL"
cat >"$DEV_NODE_POLYFILL" <<'JS'
if (typeof Promise.withResolvers !== 'function') { Promise.withResolvers = function () { let resolve, reject; const promise = new this((res, rej) => { resolve = res; reject = rej }); return { promise, resolve, reject } } }
JS

if dev_node_is_installed; then
  dev_node_log "ipfs@$DEV_NODE_IPFS_VERSION already installed in $DEV_NODE_NPM_DIR"
  exit 0
fi

# A package.json of its own keeps npm from walking up into another project.
if [ ! -f "$DEV_NODE_NPM_DIR/package.json" ]; then
  printf '{ "name": "shardgate-dev-node", "private": true }\n' >"$DEV_NODE_NPM_DIR/package.json"
fi

dev_node_log "installing ipfs@$DEV_NODE_IPFS_VERSION with npm into $DEV_NODE_NPM_DIR (takes about a minute)"
start=$SECONDS
(cd "$DEV_NODE_NPM_DIR" && npm install --no-audit --no-fund --save-exact "ipfs@$DEV_NODE_IPFS_VERSION")

dev_node_is_installed || dev_node_die "npm finished but ipfs@$DEV_NODE_IPFS_VERSION is not usable in $DEV_NODE_NPM_DIR"
dev_node_log "installed ipfs@$(dev_node_installed_version) in $((SECONDS - start)) s"
