#!/usr/bin/env bash
# Measures where a server's CPU goes during a load run: starts `outboxd serve` on a fresh data
# directory, runs one `outboxd bench --url` against it (default: 500,000 messages, 16 producers
# and 16 consumers, all three phases) while `perf record -g` samples the server, then prints the
# CPU seconds each server thread used (from /proc/<pid>/task/*/stat) and perf's per-thread and
# per-symbol split. perf.data and the report go to OUT_DIR.
#
# Usage: benches/scripts/profile.sh [extra bench flags...]     (from the repository root)
# Environment: OUTBOXD, TEMP_DIR (default /tmp), OUT_DIR (default target/perf/profile-<date>),
# MESSAGES (default 500000), PRODUCERS and CONSUMERS (default 16), PHASE (default all), PERF=0 to
# skip perf and report only the per-thread CPU seconds. Extra flags go to the bench as they are
# (not those four: the bench refuses a flag given twice).
set -euo pipefail

bin=${OUTBOXD:-target/release/outboxd}
temp_dir=${TEMP_DIR:-/tmp}
out_dir=${OUT_DIR:-target/perf/profile-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out_dir"
data_dir=$(mktemp -d "$temp_dir/outboxd-profile-XXXXXX")
server_pid=
perf_pid=
cleanup() {
  if [[ -n $perf_pid ]]; then kill -INT "$perf_pid" 2>/dev/null || true; fi
  if [[ -n $server_pid ]]; then kill -TERM "$server_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$data_dir"
}
trap cleanup EXIT

: >"$out_dir/server.out"
"$bin" serve --data-dir "$data_dir" --listen 127.0.0.1:0 >"$out_dir/server.out" 2>"$out_dir/server.err" &
server_pid=$!
until grep -q '^outboxd listening on ' "$out_dir/server.out"; do
  kill -0 "$server_pid"
  sleep 0.01
done
address=$(sed -n 's/^outboxd listening on //p' "$out_dir/server.out")

if [[ ${PERF:-1} != 0 ]]; then
  perf record -F 499 -g -p "$server_pid" -o "$out_dir/perf.data" 2>"$out_dir/perf-record.err" &
  perf_pid=$!
fi
echo "load before: $(cat /proc/loadavg)"
"$bin" bench --url "http://$address" --messages "${MESSAGES:-500000}" \
  --producers "${PRODUCERS:-16}" --consumers "${CONSUMERS:-16}" --phase "${PHASE:-all}" "$@" |
  tee "$out_dir/bench.txt"
echo "load after: $(cat /proc/loadavg)"
if [[ -n $perf_pid ]]; then
  kill -INT "$perf_pid"
  wait "$perf_pid" || true
  perf_pid=
fi

# utime + stime are fields 14 and 15 of /proc/<pid>/task/<tid>/stat, in clock ticks; the thread
# name (field 2) may contain spaces, so cut at the closing parenthesis first.
ticks=$(getconf CLK_TCK)
echo
echo "server CPU seconds per thread (threads with the same name summed):"
for stat in /proc/"$server_pid"/task/*/stat; do
  name=$(sed -E 's/^[0-9]+ \((.*)\) .*/\1/' "$stat")
  sed -E 's/^.*\) //' "$stat" | awk -v n="$name" -v t="$ticks" '{print n "\t" ($12 + $13) / t}'
done | awk -F'\t' '{s[$1] += $2; total += $2} END {for (n in s) printf "%-24s %8.2f s %5.1f %%\n", n, s[n], 100 * s[n] / total}' |
  sort -k2 -rn | tee "$out_dir/threads.txt"
# The process total also counts threads that already exited (sled starts short-lived I/O threads).
sed -E 's/^.*\) //' /proc/"$server_pid"/stat |
  awk -v t="$ticks" '{printf "process total            %8.2f s (live threads above + exited ones)\n", ($12 + $13) / t}' |
  tee -a "$out_dir/threads.txt"

if [[ -f $out_dir/perf.data ]]; then
  # `|| true`: head closing the pipe early is not a failure.
  perf report -i "$out_dir/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
    grep -v -e '^#' -e '^$' | head -20 >"$out_dir/perf-by-thread.txt" || true
  perf report -i "$out_dir/perf.data" --no-children --sort comm,symbol --stdio -g none 2>/dev/null |
    grep -v -e '^#' -e '^$' | cut -c1-120 | head -60 >"$out_dir/perf-by-symbol.txt" || true
  echo
  echo "perf samples by thread:"; cat "$out_dir/perf-by-thread.txt"
  echo
  echo "top symbols (self time):"; head -40 "$out_dir/perf-by-symbol.txt"
fi
