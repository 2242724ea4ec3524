#!/usr/bin/env bash
# Checks docs/openapi.yaml against the real server with schemathesis (property-based API testing).
#
# Goal: every response the server gives to generated requests, valid and invalid, is one the spec
# describes (status, JSON schema, headers, content type), and no request gets a 5xx or takes the
# server down. Method: install a pinned schemathesis into a virtualenv, build and start the real
# binary on 127.0.0.1:0 with a temporary data directory, run the examples, coverage, fuzzing and
# stateful (the spec's links: enqueue -> lease -> ack/nack/extend...) phases with a bounded number
# of examples per operation, then check that the server still answers /healthz and exits 0 on
# SIGTERM. Exits non-zero on any failure. About a minute, plus the pip install and the build.
#
# Environment (all optional):
#   OUTBOXD_SCHEMATHESIS_EXAMPLES  examples per operation and phase (default 300)
#   OUTBOXD_SCHEMATHESIS_SEED      hypothesis seed (default fixed, so CI runs repeat)
#   OUTBOXD_SCHEMATHESIS_VENV      virtualenv directory (default target/schemathesis/venv-VERSION)
#   OUTBOXD_SCHEMATHESIS_ARGS      extra `st run` arguments, e.g. "--report har --checks all"
#   OUTBOXD_BINARY                 a prebuilt outboxd to test instead of building one
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the CLI flags and check names below are those of schemathesis 4.x.
SCHEMATHESIS_VERSION=4.32.5
examples=${OUTBOXD_SCHEMATHESIS_EXAMPLES:-300}
seed=${OUTBOXD_SCHEMATHESIS_SEED:-20260131}
venv=${OUTBOXD_SCHEMATHESIS_VENV:-target/schemathesis/venv-$SCHEMATHESIS_VERSION}
[[ "$venv" == /* ]] || venv="$PWD/$venv"
started_s=$(date +%s)

work=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-schemathesis.XXXXXX")
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "schemathesis.sh: $*" >&2
    if [[ -s "$work/server.log" ]]; then
        echo "---- last lines of the server log ----" >&2
        tail -n 40 "$work/server.log" >&2
    fi
    exit 1
}

echo "== schemathesis $SCHEMATHESIS_VERSION in $venv"
# A virtualenv left by an earlier run is reused only if it holds the pinned version.
if ! "$venv/bin/st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" || fail "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION"
fi
"$venv/bin/st" --version

binary=${OUTBOXD_BINARY:-}
if [[ -z "$binary" ]]; then
    echo "== cargo build --features testing"
    cargo build --features testing
    binary=target/debug/outboxd
fi

echo "== start outboxd"
"$binary" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
    >"$work/stdout" 2>"$work/server.log" &
server_pid=$!
port=""
for _ in $(seq 1 300); do
    port=$(sed -n 's/^outboxd listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$work/stdout")
    [[ -n "$port" ]] && break
    kill -0 "$server_pid" 2>/dev/null || fail "outboxd exited before listening"
    sleep 0.1
done
[[ -n "$port" ]] || fail "outboxd printed no listening line within 30 s"
base_url="http://127.0.0.1:$port"
echo "outboxd listening on $base_url (pid $server_pid)"

# Long polls may wait up to 30 s each (the spec's real range); generated wait_ms values are folded
# into 0..100 so that the run's time goes into many requests rather than into a few waits.
cat >"$work/outboxd_hooks.py" <<'PYTHON'
import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if case.path.endswith("/lease") and isinstance(body, dict):
        wait_ms = body.get("wait_ms")
        if type(wait_ms) is int and 100 < wait_ms <= 30000:
            body["wait_ms"] = wait_ms % 101
PYTHON

echo "== schemathesis run ($examples examples per operation, seed $seed)"
# - GET /v1/events is left out: its 200 is an endless Server-Sent Events stream that a
#   request/response checker would wait on until its timeout.
# - One worker: on Python 3.11 hypothesis's lambda descriptions call ast.parse from several
#   threads, which fails with "AST constructor recursion depth mismatch" (a CPython bug).
# - It runs from target/ so that schemathesis keeps its failure cache (for `st replay`) and
#   hypothesis its files out of the checkout.
spec="$PWD/docs/openapi.yaml"
mkdir -p target/schemathesis/run
status=0
(cd target/schemathesis/run && PYTHONPATH="$work" SCHEMATHESIS_HOOKS=outboxd_hooks \
    "$venv/bin/st" run "$spec" \
    --url "$base_url" \
    --exclude-path /v1/events \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$examples" \
    --seed "$seed" \
    --workers 1 \
    --request-timeout 40 \
    --generation-database none \
    --suppress-health-check all \
    --no-color \
    ${OUTBOXD_SCHEMATHESIS_ARGS:-}) \
    || status=$?

echo "== server health after the run"
kill -0 "$server_pid" 2>/dev/null || fail "outboxd died during the run"
health=$("$venv/bin/python" - "$base_url/healthz" <<'PYTHON'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
    body = json.load(response)
    print(response.status, body.get("status"))
PYTHON
) || fail "GET /healthz failed"
[[ "$health" == "200 ok" ]] || fail "GET /healthz answered: $health"
echo "healthz: $health"

echo "== stop outboxd (SIGTERM)"
kill -TERM "$server_pid"
exit_code=0
wait "$server_pid" || exit_code=$?
server_pid=""
[[ "$exit_code" -eq 0 ]] || fail "outboxd exited with $exit_code after SIGTERM"

echo "== schemathesis.sh took $(($(date +%s) - started_s)) s"
[[ "$status" -eq 0 ]] || fail "schemathesis reported failures (exit $status)"
echo "schemathesis.sh: passed"
