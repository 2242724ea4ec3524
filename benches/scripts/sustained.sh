#!/usr/bin/env bash
# Measures sustained enqueue load from an independent HTTP load tool, `oha`
# (`cargo install oha --locked`): starts `outboxd serve` on a fresh data directory, then
#
# 1. full load: `oha -z DURATION -c CONNECTIONS` POSTs the same batch of BATCH messages with
#    240-byte bodies as fast as the server answers; reports messages per second, latency
#    percentiles, the status codes, the server's peak RSS (sampled every 0.2 s, and VmHWM) and CPU;
# 2. half load (unless HALF=0): the same at half the request rate the full run reached (`-q`, with
#    `--latency-correction` so that a stall counts against every request it delayed); reports
#    p99.9, the slowest request, and how many took 200 ms or more.
#
# Then it checks that the queue holds exactly 100 × the 201 answers of both runs.
#
# Usage: benches/scripts/sustained.sh     (from the repository root; loopback only)
# Environment: OUTBOXD (default target/release/outboxd), OHA (default oha), TEMP_DIR (default
# /tmp), DURATION (default 30s), CONNECTIONS (default 16), BATCH (default 100), HALF (default 1),
# OUT_DIR (default target/perf/sustained-<date>).
set -euo pipefail

bin=${OUTBOXD:-target/release/outboxd}
oha=${OHA:-oha}
temp_dir=${TEMP_DIR:-/tmp}
duration=${DURATION:-30s}
connections=${CONNECTIONS:-16}
batch=${BATCH:-100}
out_dir=${OUT_DIR:-target/perf/sustained-$(date +%Y%m%d-%H%M%S)}
queue=sustained
mkdir -p "$out_dir"
data_dir=$(mktemp -d "$temp_dir/outboxd-sustained-XXXXXX")
server_pid=
sampler_pid=
cleanup() {
  if [[ -n $sampler_pid ]]; then kill "$sampler_pid" 2>/dev/null || true; fi
  if [[ -n $server_pid ]]; then kill -TERM "$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$data_dir"
}
trap cleanup EXIT

# One batch: BATCH messages, each body a JSON string of 240 bytes (quotes included).
python3 - "$batch" >"$out_dir/batch.json" <<'EOF'
import json, sys
count = int(sys.argv[1])
print(json.dumps({"messages": [{"body": "x" * 238} for _ in range(count)]}, separators=(",", ":")))
EOF

: >"$out_dir/server.out"
"$bin" serve --data-dir "$data_dir" --listen 127.0.0.1:0 >"$out_dir/server.out" 2>"$out_dir/server.err" &
server_pid=$!
until grep -q '^outboxd listening on ' "$out_dir/server.out"; do
  kill -0 "$server_pid"
  sleep 0.01
done
address=$(sed -n 's/^outboxd listening on //p' "$out_dir/server.out")
url="http://$address/v1/queues/$queue/messages"
ticks=$(getconf CLK_TCK)
cpu_s() { sed -E 's/^.*\) //' /proc/"$server_pid"/stat | awk -v t="$ticks" '{print ($12 + $13) / t}'; }
rss_kib() { awk '/^VmRSS/ {print $2}' /proc/"$server_pid"/status; }
hwm_mib() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' /proc/"$server_pid"/status; }

# Samples RSS every 0.2 s into $1 until killed.
sample_rss() {
  while true; do rss_kib >>"$1"; sleep 0.2; done
}

# Runs oha with the given extra flags; writes $1.json and prints a summary line.
run() {
  local name=$1
  shift
  : >"$out_dir/$name.rss"
  sample_rss "$out_dir/$name.rss" &
  sampler_pid=$!
  local cpu_before
  cpu_before=$(cpu_s)
  "$oha" -z "$duration" -w -c "$connections" -m POST -D "$out_dir/batch.json" \
    -T application/json --no-tui --output-format json "$@" "$url" >"$out_dir/$name.json"
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=
  local cpu_used peak
  cpu_used=$(awk -v a="$cpu_before" -v b="$(cpu_s)" 'BEGIN {printf "%.2f", b - a}')
  peak=$(sort -n "$out_dir/$name.rss" | tail -1 | awk '{printf "%.0f", $1 / 1024}')
  jq -r --arg batch "$batch" --arg cpu "$cpu_used" --arg peak "$peak" --arg name "$name" '
    (.statusCodeDistribution["201"] // 0) as $ok
    | "\($name): \(.summary.requestsPerSec * ($batch | tonumber) | floor) msgs/s offered+answered, "
      + "\($ok * ($batch | tonumber)) stored (\($ok) × 201), statuses \(.statusCodeDistribution | tostring), "
      + "errors \(.errorDistribution | tostring); latency ms p50 \(.latencyPercentiles.p50 * 1000 | . * 10 | round / 10) "
      + "p99 \(.latencyPercentiles.p99 * 1000 | . * 10 | round / 10) p99.9 \(.latencyPercentiles["p99.9"] * 1000 | . * 10 | round / 10) "
      + "max \(.summary.slowest * 1000 | . * 10 | round / 10); server CPU \($cpu) s, peak RSS \($peak) MiB"
  ' "$out_dir/$name.json" | tee "$out_dir/$name.txt"
}

echo "load before: $(cat /proc/loadavg)"
run full
echo "  server VmHWM $(hwm_mib) MiB"
full_rps=$(jq '.summary.requestsPerSec' "$out_dir/full.json")
ok_total=$(jq '.statusCodeDistribution["201"] // 0' "$out_dir/full.json")
if [[ ${HALF:-1} != 0 ]]; then
  half_qps=$(awk -v r="$full_rps" 'BEGIN {printf "%d", r / 2}')
  run half -q "$half_qps" --latency-correction
  # Requests that took 200 ms or more, from oha's latency histogram (bucket lower bounds in s).
  jq -r '"  half load at \(.summary.requestsPerSec | floor) requests/s: requests of 200 ms or more: \(
      [.latencyDistribution // {} | to_entries[] | select((.key | tonumber) >= 0.2) | .value] | add // 0)"' \
    "$out_dir/half.json" 2>/dev/null || true
  ok_total=$((ok_total + $(jq '.statusCodeDistribution["201"] // 0' "$out_dir/half.json")))
fi
echo "load after: $(cat /proc/loadavg)"
stored=$(curl -s "http://$address/v1/queues/$queue" | jq '.counts.ready')
if [[ $stored != $((ok_total * batch)) ]]; then
  echo "MISMATCH: the queue holds $stored ready messages; the 201 answers promised $((ok_total * batch))" >&2
  exit 1
fi
echo "verified: the queue holds $stored messages, 100 per 201 answer"
echo "data dir: $(du -sb "$data_dir" | cut -f1) bytes ($(du -sb "$data_dir/log" | cut -f1) log, $(du -sb "$data_dir/catalog" | cut -f1) catalog)"
