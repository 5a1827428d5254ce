#!/usr/bin/env bash
# The two-process failover demo of the README, step by step, each step waiting for the
# line that says the previous one is ready (no fixed sleeps):
#   1. a primary ft-node, until its log channel waits for the backup;
#   2. a backup, until the primary reports the log channel up (the first ack);
#   3. ft-client, until its first connection;
#   4. kill -9 of the primary once the client has answers, until the backup is LIVE;
#   5. the client's end: it must print `verified:`.
#
# Usage: examples/two-process.sh [REQUESTS]      (default 1000)
# Environment: FT_DEMO_PORT (first of 4 loopback ports, default 7100),
#              FT_DEMO_WAIT (seconds each step may take, default 60).
# Exit codes: 0 the client verified every answer across the failover; 1 a step did not
# happen in time or a process failed (the step and the logs' tails are printed);
# 2 bad arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

requests="${1:-1000}"
if ! [[ "$requests" =~ ^[0-9]+$ ]] || [ "$requests" -lt 1 ] || [ $# -gt 1 ]; then
  echo "usage: $0 [REQUESTS]   (a positive number of client requests)" >&2
  exit 2
fi
port="${FT_DEMO_PORT:-7100}"
limit="${FT_DEMO_WAIT:-60}"
if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1024 ] || [ "$port" -gt 65532 ]; then
  echo "FT_DEMO_PORT must be a port from 1024 to 65532, not '$port'" >&2
  exit 2
fi

cargo build --release --locked -q -p ft-node
bin=target/release
dir="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

fail() {
  echo "two-process demo FAILED: $1" >&2
  for f in primary backup client; do
    [ -f "$dir/$f.log" ] && { echo "--- $f (last lines)" >&2; tail -8 "$dir/$f.log" >&2; }
  done
  exit 1
}

# wait_for LOG PATTERN WHAT PID: until LOG has a line matching PATTERN, failing if
# process PID (the one that should print it) ends first.
wait_for() {
  local deadline=$((SECONDS + limit))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    [ $SECONDS -lt "$deadline" ] || fail "$3 (no '$2' in ${limit}s)"
    kill -0 "$4" 2>/dev/null || grep -q -- "$2" "$1" || fail "$3 (the process ended first)"
    sleep 0.05
  done
  echo "ok: $3"
}

head -c 32 /dev/urandom > "$dir/key"
common=(--arbiter "file:$dir/arbiter" --key-file "$dir/key" --disk "$dir/disk")
mkdir "$dir/arbiter"

"$bin/ft-node" --role primary --listen "127.0.0.1:$port" \
  --client-listen "127.0.0.1:$((port + 1))" "${common[@]}" >"$dir/primary.log" 2>&1 &
primary=$!; pids+=("$primary")
wait_for "$dir/primary.log" "waiting for the backup" "the primary serves and waits for its backup" "$primary"

"$bin/ft-node" --role backup --peer "127.0.0.1:$port" \
  --client-listen "127.0.0.1:$((port + 2))" "${common[@]}" >"$dir/backup.log" 2>&1 &
backup=$!; pids+=("$backup")
wait_for "$dir/primary.log" "log channel up" "the backup replays the primary's log" "$backup"

"$bin/ft-client" --addr "127.0.0.1:$((port + 1))" --addr "127.0.0.1:$((port + 2))" \
  --requests "$requests" >"$dir/client.log" 2>&1 &
client=$!; pids+=("$client")
wait_for "$dir/client.log" "connected to" "the client is connected to the primary" "$client"

sleep 0.2 # some answers before the kill
if ! kill -9 "$primary" 2>/dev/null; then
  fail "the client was done before the kill: give it more requests (it had $requests)"
fi
wait "$primary" 2>/dev/null || true
echo "killed the primary (kill -9)"
wait_for "$dir/backup.log" "LIVE at" "the backup went live" "$backup"

if ! wait "$client"; then
  fail "the client did not verify its answers"
fi
if ! wait "$backup"; then
  fail "the backup, now live, did not end cleanly when the client quit"
fi
grep "verified:" "$dir/client.log"
echo "two-process demo passed: every answer verified across the failover"
