#!/usr/bin/env bash
# A private RabbitMQ node for the test run: its own node name, ports on 127.0.0.1 and data in a
# temporary folder. Debian's rabbitmq-server runs without systemd this way.
#
#   scripts/rabbitmq.sh install         install rabbitmq-server, librabbitmq-dev and docker-compose if missing
#   scripts/rabbitmq.sh start DIR       start a node with its state in DIR; prints its environment
#   scripts/rabbitmq.sh stop DIR        stop it (the data stays, so start DIR brings it back)
#   scripts/rabbitmq.sh restart DIR     stop and start again (durable queues and messages survive)
#   scripts/rabbitmq.sh remove DIR      stop it and delete DIR
#   scripts/rabbitmq.sh reap            stop and delete nodes whose test run has died
set -euo pipefail

install() {
    local missing=()
    dpkg -s librabbitmq-dev >/dev/null 2>&1 || missing+=(librabbitmq-dev)
    dpkg -s rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
    # The compose file is checked with `docker-compose config` (no docker engine needed).
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    ((${#missing[@]})) || return 0
    echo "installing ${missing[*]} …" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_env() {
    local dir=$1
    # shellcheck disable=SC1091
    source "$dir/node.env"
    export WARREN_TLS_PORT RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
}

launch() {
    local dir=$1
    node_env "$dir"
    setsid runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server \
        >>"$dir/server.out" 2>&1 </dev/null &
    local deadline=$((SECONDS + 90))
    until (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_NODE_PORT") 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "RabbitMQ did not open port $RABBITMQ_NODE_PORT within 90 s; its log:" >&2
            tail -n 40 "$dir/server.out" "$dir"/log/*.log >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
    rabbitmqctl -q -n "$RABBITMQ_NODENAME" await_startup --timeout 60 >/dev/null
}

start() {
    local dir=$1
    mkdir -p "$dir"
    if [ ! -f "$dir/node.env" ]; then
        local port
        for _ in $(seq 1 50); do
            port=$((20000 + RANDOM % 9000))
            port_free "$port" && port_free $((port + 1)) && port_free $((port + 10000)) && break
        done
        cat >"$dir/node.env" <<ENV
RABBITMQ_NODENAME=warren-test-$$-$RANDOM@localhost
RABBITMQ_NODE_PORT=$port
RABBITMQ_DIST_PORT=$((port + 10000))
WARREN_TLS_PORT=$((port + 1))
ENV
        echo '[].' >"$dir/enabled_plugins"
        certificates "$dir/tls"
        # Quick, bounded tests: no disk-space alarm on a nearly full test machine. A TLS listener
        # with a throwaway CA for the amqps:// tests.
        cat >"$dir/rabbitmq.conf" <<CONF
disk_free_limit.absolute = 50MB
listeners.ssl.1 = 127.0.0.1:$((port + 1))
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
        echo "${WARREN_TEST_OWNER:-$PPID}" >"$dir/owner"
        chown -R rabbitmq:rabbitmq "$dir"
    fi
    launch "$dir"
    node_env "$dir"
    echo "WARREN_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:$RABBITMQ_NODE_PORT/"
    echo "WARREN_TEST_AMQPS_URL=amqps://guest:guest@localhost:$WARREN_TLS_PORT/?cacertfile=$dir/tls/ca.pem"
    echo "WARREN_TEST_RABBITMQ_NODE=$RABBITMQ_NODENAME"
}

# A throwaway CA and a server certificate for localhost, valid for a day.
certificates() {
    local tls=$1
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=warren test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/san.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 1 -extfile "$tls/san.ext" -out "$tls/server.pem" 2>/dev/null
}

stop() {
    local dir=$1
    [ -f "$dir/node.env" ] || return 0
    node_env "$dir"
    # Bounded: a node still booting (recovering many queues) can leave `stop` waiting for minutes;
    # the kill below ends it anyway.
    timeout 60 rabbitmqctl -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true
    if [ -f "$dir/rabbitmq.pid" ]; then
        local pid
        pid=$(cat "$dir/rabbitmq.pid" 2>/dev/null || true)
        [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/rabbitmq.pid"
    fi
}

reap() {
    local dir owner
    for dir in /tmp/warren-rabbitmq.*; do
        [ -d "$dir" ] || continue
        owner=$(cat "$dir/owner" 2>/dev/null || echo 0)
        if [ "$owner" != 0 ] && kill -0 "$owner" 2>/dev/null; then continue; fi
        stop "$dir"
        rm -rf "$dir"
    done
}

case "${1:-}" in
    install) install ;;
    start) start "$2" ;;
    stop) stop "$2" ;;
    restart) stop "$2"; launch "$2" ;;
    remove) stop "$2"; rm -rf "$2" ;;
    reap) reap ;;
    *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
