#!/usr/bin/env bash
# Measures restart time and memory with many stored messages: starts `outboxd serve` on a fresh
# data directory, enqueues MESSAGES (default 1,000,000) 256-byte messages with `outboxd bench`,
# then SIGKILLs the server and restarts it (recovery replays the WAL written since the last
# checkpoint), then SIGTERMs it and restarts it again (a clean shutdown checkpoints, so nothing
# is replayed). For each start it reports the milliseconds from launching the process to the
# `outboxd listening on` line, the recovery log line, and the server's RSS; after the enqueue it
# reports RSS, server CPU and the data directory's size. With VERIFY=1 it finally drains the
# queue with `outboxd bench --phase consume` to check that every message survived both restarts.
#
# Usage: benches/scripts/restart.sh [ROUNDS]     (default 1; from the repository root)
# Environment: OUTBOXD, TEMP_DIR (default /tmp), MESSAGES, PRODUCERS (default 16), VERIFY.
set -euo pipefail

bin=${OUTBOXD:-target/release/outboxd}
temp_dir=${TEMP_DIR:-/tmp}
messages=${MESSAGES:-1000000}
producers=${PRODUCERS:-16}
rounds=${1:-1}
server_pid=
data_dir=
cleanup() {
  if [[ -n $server_pid ]]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [[ -n $data_dir ]]; then rm -rf "$data_dir" "$data_dir.out" "$data_dir.err"; fi
}
trap cleanup EXIT

# Starts the server on $data_dir and waits for its listening line; sets server_pid, address and
# ready_ms. Polls every 5 ms, so ready_ms is at most ~5 ms late.
start_server() {
  local log=$data_dir.out start_ns
  : >"$log"
  start_ns=$(date +%s%N)
  "$bin" serve --data-dir "$data_dir" --listen 127.0.0.1:0 >"$log" 2>"$data_dir.err" &
  server_pid=$!
  until grep -q '^outboxd listening on ' "$log"; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "server exited during startup:" >&2
      cat "$data_dir.err" >&2
      exit 1
    fi
    sleep 0.005
  done
  ready_ms=$((($(date +%s%N) - start_ns) / 1000000))
  address=$(sed -n 's/^outboxd listening on //p' "$log")
}

# RSS and peak RSS of the server, in MiB.
rss() {
  awk '/^VmRSS|^VmHWM/ {printf "%s %.0f MiB  ", $1, $2 / 1024}' /proc/"$server_pid"/status
}

cpu_s() {
  sed -E 's/^.*\) //' /proc/"$server_pid"/stat | awk -v t="$(getconf CLK_TCK)" '{print ($12 + $13) / t}'
}

# Stops the server with the given signal; prints how long it took to exit.
stop_server() {
  local start_ns
  start_ns=$(date +%s%N)
  kill -"$1" "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  echo "  SIG$1: exited after $((($(date +%s%N) - start_ns) / 1000000)) ms"
  server_pid=
}

for round in $(seq 1 "$rounds"); do
  data_dir=$(mktemp -d "$temp_dir/outboxd-restart-XXXXXX")
  queue=restart-$round
  echo "round $round: load $(cut -d' ' -f1-3 /proc/loadavg)"
  start_server
  echo "  fresh start: ready in $ready_ms ms; $(rss)"
  "$bin" bench --url "http://$address" --phase enqueue --queue "$queue" --messages "$messages" \
    --producers "$producers" --batch 100 --body-bytes 256 --json |
    jq -r '.phases[0] | "  enqueued \(.messages) in \(.elapsed_s | floor) s: \(.messages_per_s | floor) msgs/s, enqueue p50 \(.requests[0].p50_ms) p99 \(.requests[0].p99_ms) max \(.requests[0].max_ms) ms"'
  echo "  after enqueue: $(rss) server CPU $(cpu_s) s; data dir $(du -sb "$data_dir" | cut -f1) bytes"
  sleep 5
  echo "  5 s later: $(rss)"

  stop_server KILL
  start_server
  echo "  restart after SIGKILL: ready in $ready_ms ms; $(rss)"
  grep -h -i -e recover -e replay "$data_dir.err" | tail -2 | sed 's/^/    log: /'
  sleep 5
  echo "  5 s later: $(rss)"

  stop_server TERM
  start_server
  echo "  restart after SIGTERM: ready in $ready_ms ms; $(rss)"
  grep -h -i -e recover -e replay "$data_dir.err" | tail -2 | sed 's/^/    log: /'
  sleep 5
  echo "  5 s later: $(rss); data dir $(du -sb "$data_dir" | cut -f1) bytes"

  if [[ ${VERIFY:-0} == 1 ]]; then
    "$bin" bench --url "http://$address" --phase consume --queue "$queue" --messages "$messages" \
      --consumers 16 --lease-batch 100 --json |
      jq -r '"  drained: \(.phases[0].messages) acked at \(.phases[0].messages_per_s | floor) msgs/s; verification \(.verification)"'
    echo "  after draining: $(rss)"
  fi
  stop_server TERM
  rm -rf "$data_dir" "$data_dir.out" "$data_dir.err"
  data_dir=
done
