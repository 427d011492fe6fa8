#!/usr/bin/env bash
# Install what the test suite needs and run it: the one test command of the README, also called by .ci/run.
# Idempotent and safe on a brand-new Debian machine: system packages are installed only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: please install $* (needs root)" >&2
        exit 1
    fi
    if [ -z "${_APT_UPDATED:-}" ]; then
        apt-get update -qq
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL server binaries: the tests start a private cluster of their own (see tests/conftest.py).
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
fi

# pg_cron for each Debian server major version found: tests/test_cron.py runs the backfill from a real pg_cron.
for pg_bin in /usr/lib/postgresql/*/bin; do
    [ -x "$pg_bin/postgres" ] || continue
    pg_major="$(basename "$(dirname "$pg_bin")")"
    if [ ! -e "/usr/lib/postgresql/$pg_major/lib/pg_cron.so" ]; then
        apt_install "postgresql-$pg_major-cron"
    fi
done

# RabbitMQ: the broker tests talk to a real one on 127.0.0.1:5672 unless WINDMILL_TEST_AMQP_URL says otherwise.
if [ -z "${WINDMILL_TEST_AMQP_URL:-}" ]; then
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        apt_install rabbitmq-server
    fi
    if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        rabbitmq-server -detached >/dev/null 2>&1 || true
        for _ in $(seq 1 60); do
            rabbitmq-diagnostics -q ping >/dev/null 2>&1 && break
            sleep 1
        done
    fi
fi

# A real browser for the dashboard's tests (tests/test_web.py): Debian's Chromium and its WebDriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install --no-install-recommends chromium chromium-driver
fi

# promtool validates the Prometheus alert rules in deploy/prometheus (tests/test_metrics_deploy.py); Debian ships it
# in the prometheus package (the tests never start its server).
if ! command -v promtool >/dev/null 2>&1; then
    apt_install --no-install-recommends prometheus
fi

# The project and its test dependencies in a virtual environment of its own.
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

.venv/bin/ruff check .
# The rooms' import contracts ([tool.importlinter] in pyproject.toml) and the type check ([tool.mypy], its cache in
# the virtual environment).
.venv/bin/lint-imports --no-cache --no-logo
.venv/bin/mypy
# Two test processes (pytest-xdist) by default: most of the suite's time is spent waiting on real servers and
# worker processes, which a second process overlaps (README: the figures).
# Each process starts its own PostgreSQL cluster (and, for the tests that crash one, RabbitMQ node), so with
# WINDMILL_TEST_DATABASE_URL (one server for all) the tests run in one. WINDMILL_TEST_PROCESSES sets the number; 0 runs them in this process, and
# an -n of the caller's own comes after this one and wins.
if [ -n "${WINDMILL_TEST_DATABASE_URL:-}" ]; then
    processes="${WINDMILL_TEST_PROCESSES:-0}"
else
    processes="${WINDMILL_TEST_PROCESSES:-2}"
fi
exec .venv/bin/python -m pytest -n "$processes" "$@"
