#!/usr/bin/env bash
# Stops the dev node started by start.sh (TERM, then KILL after a bounded wait).
# Usage: stop.sh [STATE_DIR]   (default: $SHARDGATE_DEV_NODE_HOME/run). Idempotent.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"

state_dir="${1:-$DEV_NODE_HOME/run}"
timeout="${DEV_NODE_STOP_TIMEOUT:-15}"
pid_file="$state_dir/daemon.pid"
env_file="$state_dir/env"

pid=""
if [ -f "$pid_file" ]; then
  pid="$(tr -dc '0-9' <"$pid_file")"
elif [ -f "$env_file" ]; then
  pid="$(sed -n 's/^DEV_NODE_PID=\([0-9]*\)$/\1/p' "$env_file")"
fi

if ! dev_node_pid_is_ours "$pid"; then
  [ -z "$pid" ] || dev_node_log "daemon (pid $pid) is not running"
  rm -f "$pid_file" "$env_file"
  exit 0
fi

dev_node_log "stopping daemon (pid $pid)"
kill -TERM "$pid" 2>/dev/null || true
deadline=$((SECONDS + timeout))
while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
  sleep 0.2
done
if kill -0 "$pid" 2>/dev/null; then
  dev_node_log "still running after ${timeout} s, sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
fi
rm -f "$pid_file" "$env_file"
dev_node_log "stopped"
