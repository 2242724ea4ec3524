#!/usr/bin/env bash
# Checks docs/openapi.yaml against the real server with schemathesis (property-based API testing).
#
# Goal: every response the server gives to generated requests, valid and invalid, is one the spec
# describes (status, JSON schema, headers, content type); no request gets a 5xx or takes the
# server down; requests the spec calls valid are accepted and those it calls invalid are refused;
# and with API tokens configured, every operation but /healthz refuses a request without a valid
# token with the documented 401, and one whose token lacks the role or queue with the documented
# 403. Method: install a pinned schemathesis into a virtualenv, build the real binary, then:
#   1. open: a server without tokens, on 127.0.0.1:0 with a temporary data directory; the
#      examples, coverage, fuzzing and stateful (the spec's links: enqueue -> lease ->
#      ack/nack/extend...) phases with the conformance checks, not_a_server_error,
#      positive_data_acceptance and negative_data_rejection;
#   2. tokens: a server started with a config file that defines tokens, and a copy of the spec
#      whose security requires the bearer token; the same phases and checks with a token that
#      holds every role on every queue, so that the operations run, plus ignored_auth (each
#      operation that answers 2xx must answer 401 without the token and with a wrong one);
#   3. refusals, against the same server: the coverage phase with the conformance checks, each
#      request sent (by a hook) without a token, with an unknown one, or with a token that has
#      only `produce` on `other.*`: the 401s and 403s must be the documented ones.
# After each server's runs it must still answer /healthz and exit 0 on SIGTERM. Exits non-zero on
# any failure. A few minutes, plus the pip install and the build.
#
# Environment (all optional):
#   OUTBOXD_SCHEMATHESIS_EXAMPLES  examples per operation and phase in run 1 (default 300; run 2
#                                  takes a third of it)
#   OUTBOXD_SCHEMATHESIS_SEED      hypothesis seed (default fixed, so CI runs repeat)
#   OUTBOXD_SCHEMATHESIS_VENV      virtualenv directory (default target/schemathesis/venv-VERSION)
#   OUTBOXD_SCHEMATHESIS_ARGS      extra `st run` arguments for every run, e.g. "--report har"
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

# Starts outboxd with the given extra flags on 127.0.0.1:0 with a fresh data directory; sets
# server_pid and base_url.
start_server() {
    local name=$1
    shift
    echo "== start outboxd ($name)"
    : >"$work/stdout"
    "$binary" serve --listen 127.0.0.1:0 --data-dir "$work/data-$name" "$@" \
        >"$work/stdout" 2>"$work/server.log" &
    server_pid=$!
    local port=""
    for _ in $(seq 1 300); do
        port=$(sed -n 's/^outboxd listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$work/stdout")
        [[ -n "$port" ]] && break
        kill -0 "$server_pid" 2>/dev/null || fail "outboxd exited before listening"
        sleep 0.1
    done
    [[ -n "$port" ]] || fail "outboxd printed no listening line within 30 s"
    base_url="http://127.0.0.1:$port"
    echo "outboxd listening on $base_url (pid $server_pid)"
}

# Checks that the server still answers /healthz, then stops it with SIGTERM and expects exit 0.
stop_server() {
    echo "== server health after the runs"
    kill -0 "$server_pid" 2>/dev/null || fail "outboxd died during the run"
    local health
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
    local exit_code=0
    wait "$server_pid" || exit_code=$?
    server_pid=""
    [[ "$exit_code" -eq 0 ]] || fail "outboxd exited with $exit_code after SIGTERM"
}

# The hook adjusts generated requests where the spec cannot say all there is:
# - long polls may wait up to 30 s each (the spec's real range); generated wait_ms values are
#   folded into 0..100 so that the run's time goes into many requests rather than into a few waits;
# - a delivery time may be at most ten years ahead, a bound that moves with the clock: later
#   times are folded into range (and stay valid);
# - header names must be 1 to 256 UTF-8 bytes, which OpenAPI 3.0 cannot say, and values at most
#   8192 bytes, which the schema states in characters: an empty name becomes "_", and a name or
#   value over its byte limit is cut to it.
# Schemathesis checks a changed request against the spec again, so a request the hook makes valid
# is judged as valid. In the refusals run (OUTBOXD_ST_REFUSAL_SECRETS set), each request gets one
# of the given Authorization values in turn, or none.
cat >"$work/outboxd_hooks.py" <<'PYTHON'
import itertools
import os
import time
from datetime import datetime

import schemathesis

_refusal_secrets = os.environ.get("OUTBOXD_ST_REFUSAL_SECRETS")
_refusals = itertools.cycle([None] + _refusal_secrets.split(",")) if _refusal_secrets else None

TEN_YEARS_MS = 315360000000
HEADER_NAME_BYTES_MAX = 256
HEADER_VALUE_BYTES_MAX = 8192


def _deliver_at_in_range(value):
    # A day short of the bound, so that the server's clock reading later cannot tip it over.
    limit_ms = int(time.time() * 1000) + TEN_YEARS_MS - 86_400_000
    if type(value) is int and value > limit_ms:
        return value % limit_ms
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            return value
        if parsed.tzinfo is not None and parsed.timestamp() * 1000 > limit_ms:
            return "2030-01-31T09:00:00Z"
    return value


def _cut_to_bytes(text, bytes_max):
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= bytes_max:
        return text
    return encoded[:bytes_max].decode("utf-8", "ignore")


def _fit_message(message):
    if not isinstance(message, dict):
        return
    if "deliver_at" in message:
        message["deliver_at"] = _deliver_at_in_range(message["deliver_at"])
    headers = message.get("headers")
    if isinstance(headers, dict):
        fitted = {}
        for name, value in headers.items():
            if isinstance(name, str):
                name = _cut_to_bytes(name, HEADER_NAME_BYTES_MAX) or "_"
                while name in fitted:
                    name += "_"
            # A value over the limit in characters too is invalid for the spec as well: kept.
            if isinstance(value, str) and len(value) <= HEADER_VALUE_BYTES_MAX:
                value = _cut_to_bytes(value, HEADER_VALUE_BYTES_MAX)
            fitted[name] = value
        message["headers"] = fitted


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if case.path.endswith("/lease") and isinstance(body, dict):
        wait_ms = body.get("wait_ms")
        if type(wait_ms) is int and 100 < wait_ms <= 30000:
            body["wait_ms"] = wait_ms % 101
    if isinstance(body, dict):
        messages = body.get("messages")
        for message in messages if isinstance(messages, list) else [body]:
            _fit_message(message)
    if _refusals is not None:
        secret = next(_refusals)
        headers = dict(case.headers or {})
        headers.pop("Authorization", None)
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        case.headers = headers
PYTHON

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance
# An over-long batch, message or body is refused with the documented 413, which the default list
# of statuses that reject invalid data lacks.
cat >"$work/schemathesis.toml" <<'TOML'
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
TOML
spec="$PWD/docs/openapi.yaml"
mkdir -p target/schemathesis/run
failed_runs=()

# One `st run` of the given spec against $base_url: run NAME SPEC [st run arguments...]. A failure
# is remembered, and the next run still goes.
run() {
    local name=$1 run_spec=$2
    shift 2
    echo "== schemathesis run: $name (seed $seed)"
    # - GET /v1/events is left out: its 200 is an endless Server-Sent Events stream that a
    #   request/response checker would wait on until its timeout.
    # - One worker: on Python 3.11 hypothesis's lambda descriptions call ast.parse from several
    #   threads, which fails with "AST constructor recursion depth mismatch" (a CPython bug).
    # - It runs from target/ so that schemathesis keeps its failure cache (for `st replay`) and
    #   hypothesis its files out of the checkout.
    local status=0
    (cd target/schemathesis/run && PYTHONPATH="$work" SCHEMATHESIS_HOOKS=outboxd_hooks \
        "$venv/bin/st" --config-file "$work/schemathesis.toml" run "$run_spec" \
        --url "$base_url" \
        --exclude-path /v1/events \
        --seed "$seed" \
        --workers 1 \
        --request-timeout 40 \
        --generation-database none \
        --suppress-health-check all \
        --no-color \
        "$@" \
        ${OUTBOXD_SCHEMATHESIS_ARGS:-}) \
        || status=$?
    [[ "$status" -eq 0 ]] || failed_runs+=("$name (exit $status)")
}

# 1. No tokens: every operation is open.
start_server open
run open "$spec" \
    --checks "$checks,positive_data_acceptance,negative_data_rejection" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$examples"
stop_server

# 2 and 3. Tokens from a config file (docs/operations.md, "Access control").
admin_secret="schemathesis-admin-$RANDOM$RANDOM"
producer_secret="schemathesis-producer-$RANDOM$RANDOM"
cat >"$work/outboxd.toml" <<TOML
[[tokens]]
name = "schemathesis-admin"
secret = "$admin_secret"
roles = ["produce", "consume", "admin"]
queues = "*"

[[tokens]]
name = "schemathesis-producer"
secret = "$producer_secret"
roles = ["produce"]
queues = "other.*"
TOML
# The spec says the token is optional (a server may have none); this server requires it.
"$venv/bin/python" - "$spec" "$work/openapi-tokens.yaml" <<'PYTHON'
import sys
import yaml
with open(sys.argv[1]) as source:
    document = yaml.safe_load(source)
document["security"] = [{"bearerAuth": []}]
with open(sys.argv[2], "w") as target:
    yaml.safe_dump(document, target, sort_keys=False)
PYTHON
start_server tokens --config "$work/outboxd.toml"
run tokens "$work/openapi-tokens.yaml" \
    --header "Authorization: Bearer $admin_secret" \
    --checks "$checks,positive_data_acceptance,negative_data_rejection,ignored_auth" \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples $(( (examples + 2) / 3 ))
OUTBOXD_ST_REFUSAL_SECRETS="unknown-$RANDOM$RANDOM,$producer_secret" \
    run refusals "$work/openapi-tokens.yaml" \
    --checks "$checks" \
    --phases coverage
stop_server

echo "== schemathesis.sh took $(($(date +%s) - started_s)) s"
[[ ${#failed_runs[@]} -eq 0 ]] || fail "schemathesis reported failures in: ${failed_runs[*]}"
echo "schemathesis.sh: passed"
