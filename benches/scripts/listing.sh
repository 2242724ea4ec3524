#!/usr/bin/env bash
# Measures how long a listing page takes deep in a large queue: starts `outboxd serve` on a fresh
# data directory, enqueues MESSAGES (default 200,000) messages with `outboxd bench --phase enqueue`,
# then asks PAGES (default 20) pages of 100 from the middle of the queue for each kind of listing
# the scale test in tests/control_api.rs walks: ready oldest first, ready newest first, all states,
# and a header filter that matches nothing (so every page scans the queue to its end). For each
# kind it reports the fastest, median and slowest page in milliseconds, as curl measured them
# (connection to last byte). The target is that a page's time does not grow with the queue: pages
# from the middle of 200,000 messages take about as long as the first page.
#
# Usage: benches/scripts/listing.sh     (from the repository root)
# Environment: OUTBOXD, TEMP_DIR (default /tmp), MESSAGES (default 200000), PAGES (default 20),
# PRODUCERS (default 4).
set -euo pipefail

bin=${OUTBOXD:-target/release/outboxd}
temp_dir=${TEMP_DIR:-/tmp}
messages=${MESSAGES:-200000}
pages=${PAGES:-20}
producers=${PRODUCERS:-4}
queue=listing
server_pid=
data_dir=$(mktemp -d "$temp_dir/outboxd-listing-XXXXXX")
cleanup() {
  if [[ -n $server_pid ]]; then kill -KILL "$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$data_dir" "$data_dir.out" "$data_dir.err"
}
trap cleanup EXIT

"$bin" serve --data-dir "$data_dir" --listen 127.0.0.1:0 >"$data_dir.out" 2>"$data_dir.err" &
server_pid=$!
until grep -q '^outboxd listening on ' "$data_dir.out"; do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "server exited during startup:" >&2
    cat "$data_dir.err" >&2
    exit 1
  fi
  sleep 0.05
done
url="http://$(sed -n 's/^outboxd listening on //p' "$data_dir.out")"
echo "server $url, data directory $data_dir"

"$bin" bench --url "$url" --phase enqueue --queue "$queue" --messages "$messages" \
  --producers "$producers" --batch 1000 --body-bytes 64 >/dev/null
echo "enqueued $messages messages: $(curl -sf "$url/v1/queues/$queue" | jq -c .counts)"

# The id of the message in the middle: ids count up from 1 on a fresh server.
middle=$(printf '%016x' $((messages / 2)))

# Follows PAGES pages of 100 from CURSOR with QUERY; prints each page's time in ms.
page_times() {
  local query=$1 cursor=$2
  for _ in $(seq 1 "$pages"); do
    local out
    local address="$url/v1/queues/$queue/messages?$query&limit=100"
    [[ -z $cursor ]] || address="$address&cursor=$cursor"
    out=$(curl -sf -o "$data_dir.page" -w '%{time_total}' "$address")
    awk -v s="$out" 'BEGIN {printf "%.2f\n", s * 1000}'
    cursor=$(jq -r '.next_cursor // empty' "$data_dir.page")
    [[ -n $cursor ]] || break
  done
}

# Prints the fastest, median and slowest of the numbers on stdin.
summary() {
  sort -n | awk '{v[NR] = $1} END {printf "min %.2f ms  median %.2f ms  max %.2f ms  (%d pages)\n", v[1], v[int((NR + 1) / 2)], v[NR], NR}'
}

printf '%-28s %s\n' "first page (ready)" "$(page_times "state=ready" "" | head -n 1 | summary)"
printf '%-28s %s\n' "ready, oldest first" "$(page_times "state=ready" "ready.$middle" | summary)"
printf '%-28s %s\n' "ready, newest first" "$(page_times "state=ready&order=desc" "ready.$middle" | summary)"
printf '%-28s %s\n' "all states" "$(page_times "order=asc" "ready.$middle" | summary)"
printf '%-28s %s\n' "header filter, no match" "$(page_times "header=kind:none" "ready.$middle" | summary)"
