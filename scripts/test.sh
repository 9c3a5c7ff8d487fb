#!/usr/bin/env bash
# Runs every test: installs what is missing (rabbitmq-server, librabbitmq-dev), starts a private
# RabbitMQ on 127.0.0.1 for the integration tests, runs `swift test`, and stops that broker again,
# even when tests fail. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || { echo "Swift 6.2 or newer is needed: https://www.swift.org/install/linux/" >&2; exit 1; }

scripts/rabbitmq.sh install
scripts/rabbitmq.sh reap
dir=$(mktemp -d /tmp/warren-rabbitmq.XXXXXX)
log=$(mktemp /tmp/warren-test-log.XXXXXX)
trap 'scripts/rabbitmq.sh remove "$dir"; rm -f "$log"' EXIT
swift build --build-tests &
build=$!
echo "starting a private RabbitMQ in $dir …"
env_lines=$(WARREN_TEST_OWNER=$$ scripts/rabbitmq.sh start "$dir")
wait $build
# The example package must keep compiling against the library.
swift build --package-path Examples/TypedHandlers
export $env_lines
export WARREN_TEST_RABBITMQ_DIR="$dir"
echo "RabbitMQ is up at ${WARREN_TEST_AMQP_URL}"
status=0
if [ $# -gt 0 ]; then
    swift test --skip-build "$@" 2>&1 | tee "$log" || status=$?
else
    # The soaks load the machine for a minute each and time every job's start to 50 ms: they run
    # after the other tests, one at a time, so neither they nor the timing of the others suffer.
    swift test --skip-build --skip SoakTests 2>&1 | tee "$log" || status=$?
    for soak in InMemorySoakTests AMQPSoakTests; do
        swift test --skip-build --filter "$soak" 2>&1 | tee -a "$log" || status=$?
    done
fi
if [ "$status" -ne 0 ]; then
    # Parallel tests interleave their lines: repeat the failures where a reader of the tail sees them.
    echo
    echo "── what failed ──"
    grep -aE 'recorded an issue|✘|error:|Fatal error|Crash' "$log" | tail -n 60 || true
fi
exit "$status"
