#!/usr/bin/env bash
# Measures disk use under steady churn: starts `outboxd serve --retention-ms RETENTION_MS` (default
# 0: a message is removed at its ack; 600000 keeps delivered messages for 10 minutes) on a fresh
# data directory, runs `outboxd bench --phase mixed` (producers and
# consumers at once) RUNS times for RUN_S seconds each, back to back on the same queue (several
# short bench runs rather than one long one, because the bench keeps every id it saw in memory to
# check exactly-once delivery), and every SAMPLE_S seconds prints the data directory's size
# (`du -sb`, and its log/ and catalog/ parts), the messages stored in the queue (ready + leased, from
# GET /v1/queues/{queue}), the server's RSS and CPU seconds. The disk target is that the size
# levels off at a bound set by the live data, instead of growing with the messages that passed
# through.
#
# Usage: benches/scripts/churn.sh     (from the repository root)
# Environment: OUTBOXD, TEMP_DIR (default /tmp), RETENTION_MS (default 0), RATE (messages per
# second the producers keep to; default as fast as answered), RUNS (default 5), RUN_S (default 120), SAMPLE_S
# (default 10), PRODUCERS (default 2), CONSUMERS (default 16), BATCH (default 100), OUT (sample
# log, default target/perf/churn-<date>.tsv). With 2 producers and 16 consumers the consumers
# keep up (a few hundred messages stored); PRODUCERS=16 RUNS=50 RUN_S=5 instead builds a backlog
# of up to ~100,000 in each 5 s run and drains it, so messages do reach the catalog.
set -euo pipefail

bin=${OUTBOXD:-target/release/outboxd}
temp_dir=${TEMP_DIR:-/tmp}
runs=${RUNS:-5}
run_s=${RUN_S:-120}
sample_s=${SAMPLE_S:-10}
out=${OUT:-target/perf/churn-$(date +%Y%m%d-%H%M%S).tsv}
queue=churn
mkdir -p "$(dirname "$out")"
data_dir=$(mktemp -d "$temp_dir/outboxd-churn-XXXXXX")
server_pid=
bench_pid=
cleanup() {
  if [[ -n $bench_pid ]]; then pkill -TERM -P "$bench_pid" || true; kill -TERM "$bench_pid" 2>/dev/null || true; fi
  if [[ -n $server_pid ]]; then kill -TERM "$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$data_dir" "$data_dir.out" "$data_dir.err"
}
trap cleanup EXIT

: >"$data_dir.out"
"$bin" serve --data-dir "$data_dir" --listen 127.0.0.1:0 --retention-ms "${RETENTION_MS:-0}" \
  >"$data_dir.out" 2>"$data_dir.err" &
server_pid=$!
until grep -q '^outboxd listening on ' "$data_dir.out"; do
  kill -0 "$server_pid"
  sleep 0.01
done
address=$(sed -n 's/^outboxd listening on //p' "$data_dir.out")

echo "load before: $(cat /proc/loadavg)"
# The bench runs in a background subshell, one run after another, each writing its own JSON.
(
  for run in $(seq 1 "$runs"); do
    "$bin" bench --url "http://$address" --phase mixed --queue "$queue" --duration-s "$run_s" \
      --producers "${PRODUCERS:-2}" --consumers "${CONSUMERS:-16}" --batch "${BATCH:-100}" \
      --lease-batch 100 --body-bytes 256 ${RATE:+--rate "$RATE"} --json >"$out.bench-$run.json" || exit 1
  done
) &
bench_pid=$!

ticks=$(getconf CLK_TCK)
start_s=$(date +%s)
printf 'elapsed_s\tdata_dir_bytes\tlog_bytes\tcatalog_bytes\tstored\trss_MiB\tserver_cpu_s\tload1\n' | tee "$out"
while kill -0 "$bench_pid" 2>/dev/null; do
  # stored: ready + leased (+ scheduled + retrying), the live data the disk bound refers to.
  stats=$(curl -s "http://$address/v1/queues/$queue" |
    jq -r '.counts.ready + .counts.leased + .counts.scheduled + .counts.retrying' 2>/dev/null ||
    echo 0)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$(($(date +%s) - start_s))" \
    "$(du -sb "$data_dir" | cut -f1)" \
    "$(du -sb "$data_dir/log" | cut -f1)" \
    "$(du -sb "$data_dir/catalog" | cut -f1)" \
    "$stats" \
    "$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' /proc/"$server_pid"/status)" \
    "$(sed -E 's/^.*\) //' /proc/"$server_pid"/stat | awk -v t="$ticks" '{print ($12 + $13) / t}')" \
    "$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out"
  sleep "$sample_s"
done
wait "$bench_pid" && bench_status=0 || bench_status=$?
bench_pid=
cpu_s=$(sed -E 's/^.*\) //' /proc/"$server_pid"/stat | awk -v t="$ticks" '{print ($12 + $13) / t}')
echo "final: data dir $(du -sb "$data_dir" | cut -f1) bytes; load $(cat /proc/loadavg)"
total=0
for run in $(seq 1 "$runs"); do
  [[ -f $out.bench-$run.json ]] || continue
  jq -r '"run \(input_filename | sub(".*-"; "") | sub(".json"; "")): " + (.phases[0]
    | "\(.messages) messages acked in \(.elapsed_s | floor) s = \(.messages_per_s | floor) msgs/s, enqueue p99 \(.requests[0].p99_ms) ms; ")
    + "verification ok: \(.verification.ok)"' "$out.bench-$run.json"
  total=$((total + $(jq '.phases[0].messages' "$out.bench-$run.json")))
done
echo "total: $total messages; server CPU $cpu_s s = $(awk -v c="$cpu_s" -v n="$total" 'BEGIN {printf "%.1f", c / n * 1e6}') µs per message"
exit "$bench_status"
