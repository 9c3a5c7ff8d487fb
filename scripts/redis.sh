#!/usr/bin/env bash
# A private Redis server for the test run (Debian's redis-server): its own port on 127.0.0.1, a
# password, and its state in a temporary folder, without systemd. The job-state store's tests use it.
#
#   scripts/redis.sh install       install redis-server and libhiredis-dev if missing
#   scripts/redis.sh start DIR     start a server with its state in DIR; prints WARREN_TEST_REDIS_URL
#                                  (redis://:PASSWORD@127.0.0.1:PORT/0) and WARREN_TEST_REDIS_DIR
#   scripts/redis.sh stop DIR      stop it (start DIR brings it back on the same port and password)
#   scripts/redis.sh kill DIR      SIGKILL it
#   scripts/redis.sh remove DIR    kill it and delete DIR
#   scripts/redis.sh reap          remove servers whose test run has died (folders /tmp/warren-redis.*)
# Only the lines named above go to stdout; progress and errors go to stderr.
set -euo pipefail

install() {
    local fresh=0
    dpkg -s redis-server >/dev/null 2>&1 || fresh=1
    "$(dirname "$0")/apt-install.sh" redis-server libhiredis-dev
    # The package enables a system-wide server; the tests start their own.
    if ((fresh)) && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now redis-server >/dev/null 2>&1 || sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_of() { cat "$1/redis.pid" 2>/dev/null || true; }

alive() {
    local pid
    pid=$(pid_of "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" | cut -c1)" != Z ]
}

start() {
    local dir=$1 port password
    mkdir -p "$dir"
    [ -s "$dir/owner" ] || echo "${WARREN_TEST_OWNER:-$PPID}" >"$dir/owner"
    if [ -s "$dir/redis.conf" ]; then
        port=$(awk '$1 == "port" { print $2 }' "$dir/redis.conf")
        password=$(awk '$1 == "requirepass" { print $2 }' "$dir/redis.conf")
    else
        for _ in $(seq 1 50); do
            port=$((30000 + RANDOM % 9000))
            port_free "$port" && break
        done
        password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
        cat >"$dir/redis.conf" <<EOF
bind 127.0.0.1
port $port
requirepass $password
dir $dir
pidfile $dir/redis.pid
logfile $dir/redis.log
daemonize yes
save ""
appendonly no
EOF
    fi
    alive "$dir" || redis-server "$dir/redis.conf"
    for _ in $(seq 1 100); do
        if [ "$(REDISCLI_AUTH=$password redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then
            echo "WARREN_TEST_REDIS_URL=redis://:$password@127.0.0.1:$port/0"
            echo "WARREN_TEST_REDIS_DIR=$dir"
            return 0
        fi
        sleep 0.1
    done
    echo "redis-server did not start: see $dir/redis.log" >&2
    return 1
}

stop() {
    local dir=$1 pid
    pid=$(pid_of "$dir")
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        alive "$dir" || { rm -f "$dir/redis.pid"; return 0; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/redis.pid"
}

kill_server() {
    local pid
    pid=$(pid_of "$1")
    [ -z "$pid" ] || kill -9 "$pid" 2>/dev/null || true
    rm -f "$1/redis.pid"
}

remove() {
    [ -d "$1" ] || return 0
    kill_server "$1"
    rm -rf "$1"
}

reap() {
    local dir owner
    for dir in /tmp/warren-redis.*; do
        [ -d "$dir" ] || continue
        owner=$(cat "$dir/owner" 2>/dev/null || echo 0)
        if [ "$owner" != 0 ] && kill -0 "$owner" 2>/dev/null; then continue; fi
        # A folder just made by a run that has not written its owner yet.
        [ "$owner" = 0 ] && [ -n "$(find "$dir" -maxdepth 0 -mmin -10)" ] && continue
        remove "$dir"
    done
}

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
verb=${1:-}
(($# >= 2)) || [ "$verb" = install ] || [ "$verb" = reap ] || usage
(($# < 2)) || set -- "$1" "$(realpath -m "$2")"
case "$verb" in
    install) install ;;
    start) start "$2" ;;
    stop) stop "$2" ;;
    kill) kill_server "$2" ;;
    remove) remove "$2" ;;
    reap) reap ;;
    *) usage ;;
esac
