#!/usr/bin/env bash
# Warren against a private RabbitMQ 4.0 node on this machine (scripts/rabbitmq.sh), measured by
# warren-bench twice, side by side with the raw rabbitmq-c loop each time:
#   shared   the broker and the bench run on all CPUs and compete for them: the ratio then also
#            weighs each client's CPU per message against the broker's;
#   split    the broker runs on CPU 0 and the bench on the others, as when the broker has a host
#            of its own: the ratio says whether the client keeps up with the broker.
# Quorum queues unless told otherwise: arguments go to warren-bench after the defaults, so they win.
# Needs 2 CPUs or more. The node is removed at the end, even on failure.
#
#   scripts/bench-amqp.sh                                       quorum queues (make bench-amqp)
#   scripts/bench-amqp.sh --amqp-queue-type classic             classic queues
#   scripts/bench-amqp.sh --amqp-prefetch 1000 --amqp-rounds 9  any other warren-bench flag
set -euo pipefail
cd "$(dirname "$0")/.."
cpus=$(nproc)
if ((cpus < 2)); then
    echo "scripts/bench-amqp.sh needs 2 CPUs or more (one for the broker, the rest for the bench); this machine has $cpus" >&2
    exit 1
fi
scripts/rabbitmq.sh install
scripts/rabbitmq.sh reap
swift build -c release --product warren-bench
dir=$(mktemp -d /tmp/warren-rabbitmq.XXXXXX)
export WARREN_TEST_OWNER=$$
trap 'scripts/rabbitmq.sh remove "$dir" || true' EXIT
url=$(WARREN_RABBITMQ=4 scripts/rabbitmq.sh start "$dir" | sed -n 's/^WARREN_TEST_AMQP_URL=//p')
pid=$(cat "$dir/rabbitmq.pid")
bench=(.build/release/warren-bench --amqp-url "$url" --amqp-broker-pid "$pid" --amqp-queue-type quorum "$@")
rest=1; ((cpus == 2)) || rest=1-$((cpus - 1))

echo "== shared: RabbitMQ and warren-bench on CPUs 0-$((cpus - 1))"
"${bench[@]}"
echo
echo "== split: RabbitMQ on CPU 0, warren-bench on CPUs $rest"
taskset -a -p -c 0 "$pid" >/dev/null
taskset -c "$rest" "${bench[@]}"
