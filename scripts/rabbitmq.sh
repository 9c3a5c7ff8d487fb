#!/usr/bin/env bash
# Private RabbitMQ nodes for the test run: their own node names, ports on 127.0.0.1 and data in a
# temporary folder, without systemd. Two kinds:
#   3  Debian's own rabbitmq-server (3.10 on Debian 12), the default.
#   4  RabbitMQ 4.0 from Debian 13, run in a chroot: a minimal Debian 13 folder built once with
#      debootstrap and shared by all runs ($WARREN_RABBITMQ4_ROOT, default /var/cache/warren/rabbitmq-trixie).
#      The node's DIR is bind-mounted into the chroot at the same path, so paths it prints hold on
#      the host; proc is mounted there while any node's DIR is.
#
#   scripts/rabbitmq.sh install            install rabbitmq-server, librabbitmq-dev, debootstrap, docker-compose if missing
#   scripts/rabbitmq.sh start DIR          start a node with its state in DIR; prints WARREN_TEST_AMQP_URL,
#                                          WARREN_TEST_AMQPS_URL, WARREN_TEST_RABBITMQ_NODE
#                                          (WARREN_RABBITMQ=4 in the environment: a 4.0 node; DIR remembers its kind)
#   scripts/rabbitmq.sh stop DIR           stop it (the data stays, so start DIR brings it back)
#   scripts/rabbitmq.sh restart DIR        stop and start again (durable queues and messages survive)
#   scripts/rabbitmq.sh ctl DIR ARGS…      rabbitmqctl ARGS… for the node in DIR (the right version's, in its chroot)
#   scripts/rabbitmq.sh remove DIR         kill it and delete DIR
#   scripts/rabbitmq.sh cluster-start DIR  start a three-node 4.0 cluster in DIR/n1..n3; prints
#                                          WARREN_TEST_CLUSTER_URLS (three amqp:// URLs, comma-separated)
#                                          and WARREN_TEST_CLUSTER_DIR
#   scripts/rabbitmq.sh node-kill DIR I    SIGKILL cluster node I (1..3)
#   scripts/rabbitmq.sh node-stop DIR I    stop cluster node I gracefully
#   scripts/rabbitmq.sh node-start DIR I   start cluster node I again; it rejoins with its data. A node
#                                          waits for its peers when all were down: then start them
#                                          together with cluster-start DIR (it starts the missing ones)
#   scripts/rabbitmq.sh cluster-remove DIR kill the cluster and delete DIR
#   scripts/rabbitmq.sh reap               remove nodes and clusters (and their mounts) whose test run has died,
#                                          with the folders of scripts/test.sh
# Only the lines named above go to stdout; progress and errors go to stderr.
set -euo pipefail

ROOT4=${WARREN_RABBITMQ4_ROOT:-/var/cache/warren/rabbitmq-trixie}
# Idle Erlang schedulers busy-wait; with several nodes on a small machine that costs whole cores.
ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none"

install() {
    local packages=(librabbitmq-dev rabbitmq-server)
    command -v debootstrap >/dev/null 2>&1 || packages+=(debootstrap)
    # The compose file is checked with `docker-compose config` (no docker engine needed).
    command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
    "$(dirname "$0")/apt-install.sh" "${packages[@]}"
}

# ── the Debian 13 folder for RabbitMQ 4 ──

has_rabbitmq() { [ -x "$1/usr/lib/rabbitmq/bin/rabbitmq-server" ]; }
root_ready() { has_rabbitmq "$1" && [ -s "$1/var/lib/rabbitmq/.erlang.cookie" ]; }

# The chroot's rabbitmq user as uid:gid (not the host's).
rabbitmq_owner() {
    local owner
    owner=$(awk -F: '$1 == "rabbitmq" { print $3 ":" $4 }' "$1/etc/passwd")
    [ -n "$owner" ] || { echo "no rabbitmq user in $1/etc/passwd" >&2; return 1; }
    echo "$owner"
}

# The Erlang cookie of every node in the root and of rabbitmqctl there (HOME=/var/lib/rabbitmq).
# Made here, once: nodes that start together would each write their own.
make_cookie() {
    local cookie=$1/var/lib/rabbitmq/.erlang.cookie
    [ -s "$cookie" ] && return 0
    (umask 077 && openssl rand -hex 16 | tr 0-9a-f A-P >"$cookie")
    chown "$(rabbitmq_owner "$1")" "$cookie"
    chmod 400 "$cookie"
}

# Runs "$@" holding the root's lock: one build, mount or unmount at a time.
locked() {
    local root=$1
    shift
    mkdir -p "$(dirname "$root")"
    (
        flock -w 900 9 || { echo "timed out waiting for $root.lock" >&2; exit 1; }
        "$@"
    ) 9>"$root.lock"
}

# The host's own Debian mirror: the first deb822 stanza with a release suite (not -security or
# -updates), else the first one-line "deb URI SUITE" entry with such a suite.
mirror() {
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk 'BEGIN { RS = "" }
            { uri = ""; release = 0; n = split($0, line, "\n")
              for (i = 1; i <= n; i++) {
                  m = split(line[i], w, /[ \t]+/)
                  if (w[1] == "URIs:") uri = w[2]
                  if (w[1] == "Suites:") for (j = 2; j <= m; j++) if (w[j] !~ /-/) release = 1
              }
              if (release && uri != "") { print uri; exit } }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                                 if ($(i + 1) !~ /-/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    [ -n "$uri" ] || { echo "no Debian mirror found in the apt sources" >&2; return 1; }
    echo "$uri"
}

mounts_under() { awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r; }

# Deletes a folder after unmounting whatever is mounted inside (a bind mount would take its
# source's files along).
discard_tree() {
    local m
    for m in $(mounts_under "$1"); do umount "$m" || umount -l "$m"; done
    rm -rf --one-file-system "$1"
}

# Builds the root into a temporary sibling and renames it when complete, so an interrupted build
# never leaves a half folder behind. Called under the lock.
build_root() {
    local root=$1 tmp old uri started=$SECONDS
    root_ready "$root" && return 0
    if has_rabbitmq "$root"; then make_cookie "$root"; return; fi
    for old in "$root".build.*; do [ -e "$old" ] && discard_tree "$old"; done
    if [ -e "$root" ]; then
        echo "$root exists but holds no RabbitMQ 4 (no usr/lib/rabbitmq/bin/rabbitmq-server); remove it first" >&2
        return 1
    fi
    uri=$(mirror)
    tmp=$(mktemp -d "$root.build.XXXXXX")
    chmod 755 "$tmp"
    echo "building the RabbitMQ 4 root $root from Debian 13 (about a minute) …" >&2
    if ! debootstrap --variant=minbase --include=rabbitmq-server trixie "$tmp" "$uri" >"$tmp.log" 2>&1; then
        tail -n 20 "$tmp.log" >&2
        discard_tree "$tmp"
        rm -f "$tmp.log"
        return 1
    fi
    rm -f "$tmp.log"
    has_rabbitmq "$tmp" || { echo "debootstrap left no rabbitmq-server in $tmp" >&2; discard_tree "$tmp"; return 1; }
    make_cookie "$tmp"
    mv -T "$tmp" "$root"
    echo "built $root in $((SECONDS - started)) s" >&2
}

ensure_root() { root_ready "$1" || locked "$1" build_root "$1"; }

# Called under the lock.
bind_node() {
    local root=$1 dir=$2
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    mkdir -p "$root$dir"
    mountpoint -q "$root$dir" || mount --bind "$dir" "$root$dir"
}

# Called under the lock. proc stays mounted while any node's folder is bound in the root.
unbind_node() {
    local root=$1 dir=$2
    if mountpoint -q "$root$dir"; then umount "$root$dir" || umount -l "$root$dir"; fi
    rmdir "$root$dir" 2>/dev/null || true
    if mountpoint -q "$root/proc" && [ "$(mounts_under "$root" | grep -cvxF "$root/proc")" = 0 ]; then
        umount "$root/proc" || true
    fi
}

# ── one node ──

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port P with P … P+2N-1 and P+10000 … P+10000+2N-1 free: N nodes get P+2i (AMQP), P+2i+1 (TLS)
# and P+2i+10000 (Erlang distribution).
pick_port() {
    local n=$1 port i ok
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 9000))
        ok=1
        for ((i = 0; i < 2 * n; i++)); do
            if ! port_free $((port + i)) || ! port_free $((port + i + 10000)); then ok=0; break; fi
        done
        ((ok)) && { echo "$port"; return 0; }
    done
    echo "no free ports found" >&2
    return 1
}

node_env() {
    local dir=$1
    WARREN_RABBITMQ_KIND=3 WARREN_TLS_PORT="" WARREN_RABBITMQ4_ROOT=""
    # shellcheck disable=SC1091
    source "$dir/node.env"
    export RABBITMQ_NODENAME RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT RABBITMQ_DIST_PORT \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PID_FILE="$dir/rabbitmq.pid" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq" RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$ERL_ARGS"
    if [ "$WARREN_RABBITMQ_KIND" = 4 ]; then
        # As root in the chroot, with the rabbitmq user's HOME for the nodes' Erlang cookie.
        CTL=(chroot "$WARREN_RABBITMQ4_ROOT" env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmqctl)
    else
        CTL=(rabbitmqctl)
    fi
}

# new_node DIR KIND PORT NAME TLS(0|1) [CLUSTER_NODE…]: writes DIR's settings.
new_node() {
    local dir=$1 kind=$2 port=$3 name=$4 tls=$5 owner
    shift 5
    mkdir -p "$dir"
    {
        echo "WARREN_RABBITMQ_KIND=$kind"
        if [ "$kind" = 4 ]; then echo "WARREN_RABBITMQ4_ROOT=$ROOT4"; fi
        echo "RABBITMQ_NODENAME=$name"
        echo "RABBITMQ_NODE_PORT=$port"
        echo "RABBITMQ_DIST_PORT=$((port + 10000))"
        if ((tls)); then echo "WARREN_TLS_PORT=$((port + 1))"; fi
    } >"$dir/node.env"
    echo '[].' >"$dir/enabled_plugins"
    # Quick, bounded tests: no disk-space alarm on a nearly full test machine.
    echo "disk_free_limit.absolute = 50MB" >"$dir/rabbitmq.conf"
    if ((tls)); then
        # A TLS listener with a throwaway CA for the amqps:// tests.
        certificates "$dir/tls"
        cat >>"$dir/rabbitmq.conf" <<CONF
listeners.ssl.1 = 127.0.0.1:$((port + 1))
ssl_options.cacertfile = $dir/tls/ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
    fi
    if (($#)); then
        echo "cluster_formation.peer_discovery_backend = classic_config" >>"$dir/rabbitmq.conf"
        local i=1 peer
        for peer in "$@"; do echo "cluster_formation.classic_config.nodes.$((i++)) = $peer" >>"$dir/rabbitmq.conf"; done
    fi
    if [ "$kind" = 4 ]; then
        owner=$(rabbitmq_owner "$ROOT4")
        chown -R "$owner" "$dir"
    else
        chown -R rabbitmq:rabbitmq "$dir"
    fi
}

launch() {
    local dir=$1 cmd group
    node_env "$dir"
    group=$(cat "$dir/group" 2>/dev/null || true)
    if [ -n "$group" ] && alive "$group"; then
        # Started already (perhaps still booting).
        await_node "$dir"
        return
    fi
    cmd=(runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server)
    if [ "$WARREN_RABBITMQ_KIND" = 4 ]; then
        ensure_root "$WARREN_RABBITMQ4_ROOT"
        locked "$WARREN_RABBITMQ4_ROOT" bind_node "$WARREN_RABBITMQ4_ROOT" "$dir"
        cmd=(chroot "$WARREN_RABBITMQ4_ROOT" "${cmd[@]}")
    fi
    setsid "${cmd[@]}" >>"$dir/server.out" 2>&1 </dev/null &
    # setsid runs as the leader of a new process group: stop and kill end the whole group.
    echo $! >"$dir/group"
    await_node "$dir"
}

# Waits until the node in DIR (node_env DIR done) takes AMQP connections.
await_node() {
    local dir=$1 deadline=$((SECONDS + 120))
    until (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_NODE_PORT") 2>/dev/null; do
        if ((SECONDS > deadline)) || ! alive "$(cat "$dir/group")"; then
            echo "RabbitMQ $RABBITMQ_NODENAME did not open port $RABBITMQ_NODE_PORT; its log:" >&2
            tail -n 40 "$dir/server.out" "$dir"/log/*.log >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
    "${CTL[@]}" -q -n "$RABBITMQ_NODENAME" await_startup --timeout 60 >/dev/null
}

start() {
    local dir=$1 kind=${WARREN_RABBITMQ:-3} port
    case "$kind" in 3 | 4) ;; *) echo "WARREN_RABBITMQ must be 3 or 4, not '$kind'" >&2; exit 2 ;; esac
    mkdir -p "$dir"
    if [ ! -f "$dir/node.env" ]; then
        echo "${WARREN_TEST_OWNER:-$PPID}" >"$dir/owner"
        if [ "$kind" = 4 ]; then ensure_root "$ROOT4"; fi
        port=$(pick_port 1)
        new_node "$dir" "$kind" "$port" "warren-test-$$-$RANDOM@localhost" 1
    fi
    launch "$dir"
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

# Alive and not a zombie: a killed node's processes wait for init to reap them.
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# SIGKILL for the node's beam, then for the rest of its session (the start script, runuser,
# erl_child_setup), then waits (bounded) until none of them is alive, so that the node's folder is
# no longer in use.
kill_node() {
    local dir=$1 pid group deadline=$((SECONDS + 10))
    pid=$(cat "$dir/rabbitmq.pid" 2>/dev/null || true)
    group=$(cat "$dir/group" 2>/dev/null || true)
    if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; fi
    if [ -n "$group" ]; then
        kill -9 -- "-$group" 2>/dev/null || true
        # shellcheck disable=SC2009 # pgrep would count the zombies
        while [ "$(ps -o stat= --sid "$group" | grep -cv '^Z')" != 0 ] && ((SECONDS < deadline)); do sleep 0.05; done
    fi
    while [ -n "$pid" ] && alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
    rm -f "$dir/rabbitmq.pid" "$dir/group"
}

stop() {
    local dir=$1
    [ -f "$dir/node.env" ] || return 0
    node_env "$dir"
    # Bounded: a node still booting (recovering many queues) can leave `stop` waiting for minutes;
    # the kill below ends it anyway.
    timeout 60 "${CTL[@]}" -q -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true
    kill_node "$dir"
}

remove() {
    local dir=$1
    if [ -f "$dir/node.env" ]; then
        node_env "$dir"
        kill_node "$dir"
        [ "$WARREN_RABBITMQ_KIND" = 4 ] && locked "$WARREN_RABBITMQ4_ROOT" unbind_node "$WARREN_RABBITMQ4_ROOT" "$dir"
    fi
    rm -rf "$dir"
}

# ── a three-node 4.0 cluster ──

cluster_start() {
    local dir=$1 started=$SECONDS i port names=()
    mkdir -p "$dir"
    if [ ! -f "$dir/n3/node.env" ]; then
        echo "${WARREN_TEST_OWNER:-$PPID}" >"$dir/owner"
        ensure_root "$ROOT4"
        port=$(pick_port 3)
        local prefix="warren-test-$$-$RANDOM"
        for i in 1 2 3; do names+=("$prefix-n$i@localhost"); done
        for i in 1 2 3; do
            new_node "$dir/n$i" 4 $((port + 2 * (i - 1))) "${names[i - 1]}" 0 "${names[@]}"
        done
    fi
    # Booting together, the nodes find each other through classic_config peer discovery.
    local pids=() failed=0 pid
    for i in 1 2 3; do
        launch "$dir/n$i" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    ((failed == 0)) || return 1
    node_env "$dir/n1"
    if ! "${CTL[@]}" -q -n "$RABBITMQ_NODENAME" await_online_nodes 3 --timeout 60 >/dev/null 2>&1; then
        echo "the cluster in $dir did not reach three running nodes:" >&2
        "${CTL[@]}" -n "$RABBITMQ_NODENAME" cluster_status >&2 || true
        return 1
    fi
    echo "cluster of three RabbitMQ 4 nodes up in $((SECONDS - started)) s" >&2
    local urls=()
    for i in 1 2 3; do
        node_env "$dir/n$i"
        urls+=("amqp://guest:guest@127.0.0.1:$RABBITMQ_NODE_PORT/")
    done
    echo "WARREN_TEST_CLUSTER_URLS=$(IFS=,; echo "${urls[*]}")"
    echo "WARREN_TEST_CLUSTER_DIR=$dir"
}

cluster_node() {
    local dir=$1 i=$2
    [[ "$i" =~ ^[1-3]$ ]] || { echo "node index must be 1, 2 or 3, not '$i'" >&2; exit 2; }
    [ -f "$dir/n$i/node.env" ] || { echo "no cluster node in $dir/n$i" >&2; exit 1; }
    echo "$dir/n$i"
}

cluster_remove() {
    local dir=$1 i root=""
    if [ -f "$dir/n1/node.env" ]; then
        node_env "$dir/n1"
        root=$WARREN_RABBITMQ4_ROOT
    fi
    for i in 1 2 3; do remove "$dir/n$i"; done
    if [ -n "$root" ]; then rmdir "$root$dir" 2>/dev/null || true; fi
    rm -rf "$dir"
}

# ── clean-up after dead runs ──

reap() {
    local dir owner root m
    for dir in /tmp/warren-rabbitmq.* /tmp/warren-test.*; do
        [ -d "$dir" ] || continue
        owner=$(cat "$dir/owner" 2>/dev/null || echo 0)
        if [ "$owner" != 0 ] && kill -0 "$owner" 2>/dev/null; then continue; fi
        # A folder just made by a run that has not written its owner yet.
        [ "$owner" = 0 ] && [ -n "$(find "$dir" -maxdepth 0 -mmin -10)" ] && continue
        case "$dir" in
            /tmp/warren-test.*) rm -rf "$dir" ;; # scripts/test.sh's log and environment lines
            *) if [ -d "$dir/n1" ]; then cluster_remove "$dir"; else remove "$dir"; fi ;;
        esac
    done
    # Bind mounts whose folder is gone (a run killed in the middle of its clean-up).
    root=$ROOT4
    [ -d "$root" ] || return 0
    for m in $(mounts_under "$root/tmp"); do
        case "$m" in "$root"/tmp/warren-rabbitmq.*) ;; *) continue ;; esac
        [ -d "${m#"$root"}" ] || locked "$root" unbind_node "$root" "${m#"$root"}"
    done
}

usage() { sed -n '2,29p' "$0" >&2; exit 2; }
verb=${1:-}
(($# >= 2)) || [ "$verb" = install ] || [ "$verb" = reap ] || usage
# An absolute DIR: the chroot sees it at the same path, and the printed paths hold anywhere.
(($# < 2)) || set -- "$1" "$(realpath -m "$2")" "${@:3}"
case "$verb" in
    install) install ;;
    start) start "$2" ;;
    stop) stop "$2" ;;
    restart) stop "$2"; launch "$2" ;;
    remove) remove "$2" ;;
    ctl) node_env "$2"; "${CTL[@]}" -q -n "$RABBITMQ_NODENAME" "${@:3}" ;;
    cluster-start) cluster_start "$2" ;;
    node-kill | node-stop | node-start)
        node=$(cluster_node "$2" "${3:-}") || exit
        case "$verb" in
            node-kill) kill_node "$node" ;;
            node-stop) stop "$node" ;;
            node-start) launch "$node" ;;
        esac ;;
    cluster-remove) cluster_remove "$2" ;;
    reap) reap ;;
    *) usage ;;
esac
