#!/usr/bin/env bash
# Measures the throughput and latency rows of docs/performance.md: each round runs the disk's
# fsync baseline and then every load row against a fresh spawned server, so that every figure has
# a baseline taken minutes apart on the same (possibly shared) machine. Raw JSON goes to OUT_DIR;
# a summary of every run and the median of each row are printed at the end.
#
# Usage: benches/scripts/throughput.sh [ROUNDS]     (default 3; run from the repository root)
# Environment: OUTBOXD (binary, default target/release/outboxd), TEMP_DIR (where the servers'
# data directories and the baseline's scratch file go: put it on the disk you mean to measure,
# default /tmp), OUT_DIR (default target/perf/throughput-<date>), MESSAGES (default 500000, the
# size of the all16 and mixed16 rows), ROWS (a subset of the row names below).
set -euo pipefail

rounds=${1:-3}
bin=${OUTBOXD:-target/release/outboxd}
temp_dir=${TEMP_DIR:-/tmp}
out_dir=${OUT_DIR:-target/perf/throughput-$(date +%Y%m%d-%H%M%S)}
messages=${MESSAGES:-500000}
mkdir -p "$out_dir" "$temp_dir"

# name|bench flags (all runs are --spawn, 256-byte bodies, --json). all16 gives the enqueue,
# consume and mixed rows; mixed16 is the mixed phase alone on a fresh server (producers outrun
# consumers, so the backlog grows); mixed2x16 has consumers that keep up (2 producers), with the
# default 24 h retention and with --retention-ms 0; half1x20 and half1x10 are single producers
# with small batches, to load the server at about half its peak (the bench has no rate knob).
rows=(
  "all16|--messages $messages --producers 16 --batch 100 --consumers 16 --lease-batch 100 --phase all"
  "mixed16|--messages $messages --producers 16 --batch 100 --consumers 16 --lease-batch 100 --phase mixed"
  "mixed2x16|--messages 1000000 --producers 2 --batch 100 --consumers 16 --lease-batch 100 --phase mixed"
  "mixed2x16r0|--messages 1000000 --producers 2 --batch 100 --consumers 16 --lease-batch 100 --phase mixed --server-arg=--retention-ms=0"
  "single64|--messages 200000 --producers 64 --batch 1 --phase enqueue"
  "half1x20|--messages 300000 --producers 1 --batch 20 --phase enqueue"
  "half1x10|--messages 300000 --producers 1 --batch 10 --phase enqueue"
  "light1x1|--messages 10000 --producers 1 --batch 1 --phase enqueue"
)
# ROWS (names separated by spaces) runs a subset.
selected=" ${ROWS:-all16 mixed16 mixed2x16 mixed2x16r0 single64 half1x20 half1x10 light1x1} "

for round in $(seq 1 "$rounds"); do
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  "$bin" bench --fsync-baseline --duration-s 3 --temp-dir "$temp_dir" >"$out_dir/r$round-fsync.txt"
  echo "round $round: load $load; $(head -1 "$out_dir/r$round-fsync.txt" | sed 's/.*= //')"
  echo "$load" >"$out_dir/r$round-loadavg.txt"
  for row in "${rows[@]}"; do
    name=${row%%|*}
    [[ $selected == *" $name "* ]] || continue
    # shellcheck disable=SC2086 # the flags are meant to split
    "$bin" bench --spawn --temp-dir "$temp_dir" --body-bytes 256 --json ${row#*|} \
      >"$out_dir/r$round-$name.json"
    echo "  $name done (load $(cut -d' ' -f1 /proc/loadavg))"
  done
done

# One line per run and phase: msgs/s, server CPU per message, the cores the server got (its CPU
# seconds over the phase's elapsed seconds: below 2 on a 2-core machine means others took the
# rest), peak RSS, latency of each request kind.
summary() {
  for file in "$out_dir"/r*-*.json; do
    jq -r --arg run "$(basename "$file" .json)" '.phases[] as $p
      | [$run, $p.phase, ($p.messages_per_s | floor),
         (($p.server_cpu_s / $p.messages * 1e6 * 10 | floor) / 10),
         (($p.server_cpu_s / $p.elapsed_s * 100 | floor) / 100),
         ($p.server_peak_rss_bytes / 1048576 | floor),
         ($p.requests | map("\(.kind) p50 \(.p50_ms) p99 \(.p99_ms) max \(.max_ms)") | join("; ")),
         (if .verification.ok then "ok" else "FAILED" end)] | @tsv' "$file"
  done
}
echo
echo "run	phase	msgs/s	server_cpu_us_per_msg	server_cores	peak_rss_MiB	latency_ms	verification"
summary | tee "$out_dir/summary.tsv"
echo
echo "fsync baselines (syncs/s):"
grep -h 'syncs/s' "$out_dir"/r*-fsync.txt | sed 's/.*= //'
echo
echo "medians (row phase: msgs/s and server µs/msg, each the median of the rounds, then all values):"
# Prints, per row and phase, the median of column $1 of the summary and the sorted values.
medians() {
  sed -E 's/^r[0-9]+-//' "$out_dir/summary.tsv" | sort -t$'\t' -k1,1 -k2,2 -k"$1","$1"g |
    awk -F'\t' -v c="$1" '{k = $1 " " $2; v[k] = v[k] " " $c; n[k]++}
      END {for (k in v) {split(substr(v[k], 2), a, " "); print k ": " a[int((n[k] + 1) / 2)] " (" substr(v[k], 2) ")"}}' |
    sort
}
echo "msgs/s:"; medians 3
echo "server µs per message:"; medians 4
echo "raw JSON in $out_dir"
