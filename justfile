# zapgate's tasks. On a fresh machine run them through ./dev, which installs what they need first.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments  # recipes pass "$@" on, so that an argument with spaces stays one

python := ".venv/bin/python"

# List the recipes.
default:
    @just --list

# The main job: the API on http://127.0.0.1:8000 and the session host, store in ./data, real WhatsApp.
run:
    {{python}} -m infra.together

# The same with the simulated WhatsApp on http://127.0.0.1:8001, to try it without a phone.
demo:
    ZAPGATE_STORE="${ZAPGATE_STORE:-./demo/store}" ZAPGATE_API_PORT="${ZAPGATE_API_PORT:-8001}" \
    ZAPGATE_WHATSAPP_BACKEND=simulated ZAPGATE_WHATSAPP_SIMULATOR_DIR=./demo/whatsapp {{python}} -m infra.together

# Talk to a running zapgate: `just zg sessions`, `just zg send user1 5511999999999 "Olá"`, `just zg job ID`.
zg *args:
    @{{python}} -m infra.cli "$@"

# Drive the demo's simulated WhatsApp: `just sim scan user1`, `just sim delivered`.
sim *args:
    @{{python}} -m session_host.whatsapp.simulated ./demo/whatsapp "$@"

# The tests, against a real S3 server: Ceph RGW started here, unless ZAPGATE_S3_ENDPOINT names one.
test *args:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "${ZAPGATE_S3_ENDPOINT:-}" ]; then
        eval "$(infra/s3server/rgw.sh start)"
        trap 'infra/s3server/rgw.sh stop' EXIT
    fi
    {{python}} -m pytest "$@"

# The benchmarks, against the same kind of S3 server as the tests.
bench *args:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "${ZAPGATE_S3_ENDPOINT:-}" ]; then
        eval "$(infra/s3server/rgw.sh start)"
        trap 'infra/s3server/rgw.sh stop' EXIT
    fi
    {{python}} -m bench "$@"
    {{python}} -m bench.memory  # PSS per idle neonize session at 1, 10 and 50 sessions; needs no S3

# Lint, format and type checks.
lint:
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy
