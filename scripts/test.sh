#!/usr/bin/env bash
# Runs every test: installs what is missing (rabbitmq-server, librabbitmq-dev, debootstrap,
# redis-server, libhiredis-dev), starts private servers on 127.0.0.1 for the integration tests
# (RabbitMQ 4.0, RabbitMQ 3.10 and a three-node RabbitMQ 4.0 cluster, see scripts/rabbitmq.sh; a Redis
# for the job-state store, see scripts/redis.sh), runs `swift test`, and removes the servers again,
# even when tests fail. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || { echo "Swift 6.2 or newer is needed: https://www.swift.org/install/linux/" >&2; exit 1; }

scripts/rabbitmq.sh install
scripts/redis.sh install
scripts/rabbitmq.sh reap
scripts/redis.sh reap
main=$(mktemp -d /tmp/warren-rabbitmq.XXXXXX)    # RabbitMQ 4.0: the broker of most tests
legacy=$(mktemp -d /tmp/warren-rabbitmq.XXXXXX)  # RabbitMQ 3.10: the conformance suite runs on both
cluster=$(mktemp -d /tmp/warren-rabbitmq.XXXXXX) # three RabbitMQ 4.0 nodes for ClusterTests
redis=$(mktemp -d /tmp/warren-redis.XXXXXX)       # Redis for the job-state store's tests
run=$(mktemp -d /tmp/warren-test.XXXXXX)          # this run's log and the brokers' environment lines
log=$run/log
echo $$ >"$run/owner"
starts=()
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    # A broker still starting is waited for, so that none outlives the run.
    ((${#starts[@]} == 0)) || wait "${starts[@]}" 2>/dev/null || true
    scripts/rabbitmq.sh remove "$main" || true
    scripts/rabbitmq.sh remove "$legacy" || true
    scripts/rabbitmq.sh cluster-remove "$cluster" || true
    scripts/redis.sh remove "$redis" || true
    rm -rf "$run"
}
trap cleanup EXIT
swift build --build-tests &
build=$!
echo "starting RabbitMQ 4.0, RabbitMQ 3.10 and a three-node RabbitMQ 4.0 cluster in /tmp/warren-rabbitmq.* …"
export WARREN_TEST_OWNER=$$
WARREN_RABBITMQ=4 scripts/rabbitmq.sh start "$main" >"$run/main.env" &
starts+=($!)
WARREN_RABBITMQ=3 scripts/rabbitmq.sh start "$legacy" >"$run/legacy.env" &
starts+=($!)
scripts/rabbitmq.sh cluster-start "$cluster" >"$run/cluster.env" &
starts+=($!)
scripts/redis.sh start "$redis" >"$run/redis.env"
wait $build
# The example package must keep compiling against the library.
swift build --package-path Examples/TypedHandlers
# A broker in a package of its own, on the transport seam alone, passes the conformance suite.
swift test --package-path Examples/TinyTransport
for start in "${starts[@]}"; do
    wait "$start" || { echo "a RabbitMQ did not start (see above)" >&2; exit 1; }
done
starts=()
# shellcheck disable=SC2046 # one VAR=value per word
export $(cat "$run/main.env") $(sed -n 's/^WARREN_TEST_AMQP_URL=/WARREN_TEST_LEGACY_AMQP_URL=/p' "$run/legacy.env") \
    $(cat "$run/cluster.env") $(cat "$run/redis.env")
export WARREN_TEST_RABBITMQ_DIR="$main"
echo "RabbitMQ 4.0 is up at $WARREN_TEST_AMQP_URL, 3.10 at $WARREN_TEST_LEGACY_AMQP_URL, the cluster at $WARREN_TEST_CLUSTER_URLS, Redis on $(sed -n 's/.*@//p' "$run/redis.env")"
# What the tests write to the temporary directory (handlers files, child processes' logs) goes
# into this run's folder, which the clean-up removes even when a test did not.
mkdir "$run/tmp"
export TMPDIR="$run/tmp"
status=0
if [ $# -gt 0 ]; then
    swift test --skip-build "$@" 2>&1 | tee "$log" || status=$?
else
    # The soaks load the machine for a minute each and time every job's start to 50 ms: they run
    # after the other tests, one at a time, so neither they nor the timing of the others suffer.
    swift test --skip-build --skip SoakTests --skip ClusterTests --skip BinaryTests 2>&1 | tee "$log" || status=$?
    # Checks that run the built binaries at full speed: alone, like the soaks.
    swift test --skip-build --filter BinaryTests 2>&1 | tee -a "$log" || status=$?
    for soak in InMemorySoakTests AMQPSoakTests; do
        swift test --skip-build --filter "$soak" 2>&1 | tee -a "$log" || status=$?
    done
    # The cluster's failure tests kill and restart nodes: on their own too.
    swift test --skip-build --filter ClusterTests 2>&1 | tee -a "$log" || status=$?
fi
if [ "$status" -ne 0 ]; then
    # Parallel tests interleave their lines: repeat the failures where a reader of the tail sees them.
    echo
    echo "── what failed ──"
    grep -aE 'recorded an issue|✘|error:|Fatal error|Crash' "$log" | tail -n 60 || true
fi
exit "$status"
