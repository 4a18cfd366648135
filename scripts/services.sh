#!/usr/bin/env bash
# Project-private RabbitMQ, PostgreSQL and Redis for seatrush development,
# tests, the demo and the benchmark (Redis serves only the benchmark's Redis
# design). All listen on 127.0.0.1 only, on their own ports, with all state
# under .services/, so they never interfere with system-wide servers
# (RabbitMQ node rabbit@localhost on 5672, PostgreSQL on 5432, Redis on
# 6379). Run as root, PostgreSQL belongs to the `postgres` user, and when that
# user cannot reach .services/ (a checkout under /root) its cluster lives in
# /tmp/seatrush-pg-<port> instead (see pg_base); RabbitMQ, Redis, and
# PostgreSQL when not root, run as the invoking user. Missing packages are
# installed by scripts/prerequisites.sh (through sudo when not root).
#
# Usage: scripts/services.sh [start|stop|status|env|start-db|restart-db|stop-db|
#                             start-broker|restart-broker|stop-broker|
#                             start-redis|restart-redis|stop-redis|kill-redis|
#                             kill-broker-node N|start-broker-node N|
#                             stop-broker-node N|isolate-broker-node N|
#                             heal-broker-node N|queue-leaders|
#                             busiest-broker-node]
#   start   (default) install packages if missing, start the three instances
#           if not running, wait until they accept connections, then print
#           `export AMQP_URL=...` / `export DATABASE_URL=...` /
#           `export REDIS_URL=...` on stdout.
#           If AMQP_URL and DATABASE_URL are both already set (to something
#           other than the private URLs) neither RabbitMQ nor PostgreSQL is
#           started; they are echoed. Redis is chosen on its own: if REDIS_URL
#           is set (to something other than the private URL) it is echoed and
#           nothing is started for it; otherwise the private Redis is started,
#           even when the other two are external.
#   env     print the export lines only (same URL choice as start), start
#           nothing.
#   stop    stop the three private instances (only these; never by name
#           pattern).
#   status  report (on stdout) whether each private instance is running;
#           exit status 0 only if all three are.
#   start-db, stop-db
#           the same as start and stop, for PostgreSQL alone (start-db prints
#           the DATABASE_URL export line).
#   restart-db
#           crash-restart PostgreSQL: stop it with `pg_ctl -m immediate` (no
#           checkpoint, clients cut off, crash recovery on start), then start
#           it. For fault tests, on an instance of their own (give it its own
#           SEATRUSH_PG_PORT and SEATRUSH_SERVICES_DIR).
#   start-broker, restart-broker, stop-broker
#           the same for RabbitMQ alone (start-broker prints the AMQP_URL
#           export line; restart-broker stops the node and starts it again,
#           its durable queues and their messages recovered). For fault tests,
#           on a node of their own (SEATRUSH_AMQP_PORT, SEATRUSH_SERVICES_DIR).
#   start-redis, stop-redis
#           the same for Redis alone (start-redis prints the REDIS_URL export
#           line and always starts the private server, whatever REDIS_URL
#           says). stop-redis sends SIGTERM to the recorded pid: Redis syncs
#           its append-only file and exits.
#   kill-redis
#           SIGKILL the private Redis by its recorded pid (no shutdown, no last
#           sync: what Redis had written to its AOF stays in the kernel and is
#           replayed; only a crash of the machine would also lose the unsynced
#           part), for crash tests; fails if no private Redis runs.
#   restart-redis
#           crash-restart Redis: kill-redis (if it runs), then start-redis;
#           the server replays its append-only file. For fault tests, on an
#           instance of their own (SEATRUSH_REDIS_PORT, SEATRUSH_SERVICES_DIR).
#
# A RabbitMQ cluster (SEATRUSH_BROKER_NODES=3, or any count above 1):
#   start, start-broker, restart-broker, stop, stop-broker and status then
#           address every node of a cluster on loopback: node i listens on
#           the base port + i - 1 (base 25681 unless SEATRUSH_AMQP_PORT says
#           otherwise; distribution 10000 below), with its own state under
#           rabbitmq-<port>/ and the first node's cookie. Nodes 2..N join
#           node 1 once; a member rejoins by itself when it restarts. Nodes
#           run with cluster_partition_handling = pause_minority. AMQP_URL
#           lists every node, comma-separated. Quorum queues declared on it
#           get a replica on every node. (TLS is for a single node only.)
#   kill-broker-node N
#           SIGKILL node N's VM by its recorded pid, as a machine lost.
#   start-broker-node N, stop-broker-node N
#           start node N again (it rejoins), or stop it gracefully.
#   isolate-broker-node N, heal-broker-node N
#           cut node N off from the others, as a network partition would
#           (each side is given a wrong cookie for the other and their
#           links are dropped; pause_minority pauses node N), and heal it.
#   queue-leaders
#           each quorum queue and the node leading it, tab-separated.
#   busiest-broker-node
#           the number of the node leading the most quorum queues.
#
#   eval "$(scripts/services.sh start)"
#
# For start/env, human-readable messages go to stderr and stdout carries only
# the export lines.
#
# Environment:
#   SEATRUSH_SERVICES_DIR    state dir (default: <repo>/.services)
#   SEATRUSH_AMQP_PORT       AMQP port (default 25673; 25672 is taken by the
#                            system RabbitMQ's Erlang distribution listener);
#                            of a cluster, the first node's (default 25681)
#   SEATRUSH_BROKER_NODES    RabbitMQ nodes to run as one cluster (default 1)
#   SEATRUSH_AMQP_DIST_PORT  Erlang distribution port (default AMQP port-10000:
#                            below the kernel's ephemeral ports, which an
#                            outgoing connection may hold when a node starts)
#   SEATRUSH_PG_PORT         PostgreSQL port (default 25432)
#   SEATRUSH_REDIS_PORT      Redis port (default 26379)
#   SEATRUSH_REDIS_FSYNC     Redis appendfsync when a server is started:
#                            everysec (default), always or no. A running
#                            server keeps the setting it was started with.
#   SEATRUSH_TLS             1: also serve TLS, with a private CA and a server
#                            certificate for localhost and 127.0.0.1 under
#                            <state>/tls: PostgreSQL with ssl=on, RabbitMQ on
#                            an amqps listener at the AMQP port + 1. start-db and
#                            start-broker then also print SEATRUSH_TLS_CA (the
#                            CA's path) and AMQPS_URL. Off by default: clients
#                            that prefer TLS would otherwise use it everywhere.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${SEATRUSH_SERVICES_DIR:-$root/.services}

amqp_port=${SEATRUSH_AMQP_PORT:-25673}

# A node's Erlang distribution port: 10000 below its AMQP port, outside the
# kernel's range of ephemeral ports (32768 and up by default), so no outgoing
# connection can hold it when the node starts or restarts.
dist_of() {
    local port=$(($1 - 10000))
    if [ "$port" -lt 1024 ]; then
        echo "[services] the AMQP port $1 leaves no distribution port 10000 below it; set SEATRUSH_AMQP_DIST_PORT" >&2
        exit 2
    fi
    echo "$port"
}
dist_port=${SEATRUSH_AMQP_DIST_PORT:-$(dist_of "$amqp_port")}
pg_port=${SEATRUSH_PG_PORT:-25432}
redis_port=${SEATRUSH_REDIS_PORT:-26379}
redis_fsync=${SEATRUSH_REDIS_FSYNC:-everysec}

# A cluster (SEATRUSH_BROKER_NODES > 1) has its own ports, from 25681 unless
# SEATRUSH_AMQP_PORT says otherwise: node i listens on the base + i - 1.
broker_nodes=${SEATRUSH_BROKER_NODES:-1}
case "$broker_nodes" in
    '' | *[!0-9]* | 0) echo "[services] SEATRUSH_BROKER_NODES must be a positive number" >&2; exit 2 ;;
esac
if [ "$broker_nodes" -gt 1 ] && [ -z "${SEATRUSH_AMQP_PORT:-}" ]; then
    amqp_port=25681
    dist_port=$(dist_of "$amqp_port")
fi
cluster_base=$amqp_port

rmq_node="seatrush-${amqp_port}@localhost"
rmq_dir="$state/rabbitmq-$amqp_port"
rmq_bin=/usr/lib/rabbitmq/bin

private_amqp_url="amqp://guest:guest@127.0.0.1:${amqp_port}/%2f"
if [ "$broker_nodes" -gt 1 ]; then
    # Every node of the cluster, comma-separated: clients connect to any live one.
    private_amqp_url=$(
        for i in $(seq 0 $((broker_nodes - 1))); do
            printf 'amqp://guest:guest@127.0.0.1:%s/%%2f\n' $((cluster_base + i))
        done | paste -sd, -
    )
fi
tls=${SEATRUSH_TLS:-0}
tls_dir="$state/tls"
amqps_port=$((amqp_port + 1))
private_amqps_url="amqps://guest:guest@localhost:${amqps_port}/%2f"
private_database_url="postgres://seatrush@127.0.0.1:${pg_port}/seatrush"
# A primary with a streaming standby (SEATRUSH_PG_STANDBY=1): member 1 on
# the PostgreSQL port, member 2 on the next; either may be the primary.
pg_standby=${SEATRUSH_PG_STANDBY:-0}
pg_pair_base=$pg_port
if [ "$pg_standby" = 1 ]; then
    private_database_url="postgres://seatrush@127.0.0.1:${pg_port},127.0.0.1:$((pg_port + 1))/seatrush"
fi

redis_dir="$state/redis-$redis_port"
redis_bin=/usr/bin/redis-server
private_redis_url="redis://127.0.0.1:${redis_port}/"

wait_secs=60

# ---------------------------------------------------------------- helpers

# A private CA and a server certificate signed by it (a self-signed server
# certificate would be refused by clients that check it is not a CA), for
# localhost and 127.0.0.1. Created once.
tls_ensure() {
    [ "$tls" = 1 ] || return 0
    [ -s "$tls_dir/server.pem" ] && return 0
    command -v openssl >/dev/null || die "SEATRUSH_TLS=1 needs openssl (apt-get install openssl)"
    mkdir -p "$tls_dir"
    (
        cd "$tls_dir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=seatrush test CA" \
            -keyout ca.key -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -days 3650 -extfile server.ext -out server.pem 2>/dev/null
    ) || die "could not create the TLS certificates in $tls_dir"
    say "tls: private CA and server certificate in $tls_dir"
}

tls_exports() {
    [ "$tls" = 1 ] || return 0
    echo "export SEATRUSH_TLS_CA=$tls_dir/ca.pem"
}

say() { printf '[services] %s\n' "$*" >&2; }

die() {
    say "ERROR: $*"
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# Print the last lines of a log file to stderr (for failure diagnostics).
log_tail() {
    local f=$1
    if [ -f "$f" ]; then
        say "---- last lines of $f ----"
        tail -n 40 "$f" >&2 || true
        say "----"
    fi
}

# True if something accepts TCP connections on 127.0.0.1:<port>.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True if an AMQP 0-9-1 server answers the protocol header on 127.0.0.1:<port>
# (its first frame is a method frame, type 1).
amqp_answers() {
    local reply
    reply=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        head -c 1 <&3 | od -An -tx1' _ "$1" 2>/dev/null) || return 1
    [[ "$reply" == *01* ]]
}

# True if PostgreSQL on 127.0.0.1:<port> accepts the seatrush role on its database.
pg_answers() {
    command -v psql >/dev/null || return 1
    psql -X -q -A -t "postgres://seatrush@127.0.0.1:$1/seatrush" -c 'select 1' >/dev/null 2>&1
}

# True if <pid> is alive and its command line or environment mentions
# <marker>; guards against killing an unrelated process that reused a pid.
pid_is_ours() {
    local pid=$1 marker=$2
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # Read fully before matching (grep -q in a pipe + pipefail = SIGPIPE races).
    local info
    info=$({ tr '\0' '\n' <"/proc/$pid/cmdline" && tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null) || true
    [[ $info == *"$marker"* ]]
}

read_pid() { [ -f "$1" ] && tr -dc '0-9' <"$1" || true; }

# Close every fd but stdin/stdout/stderr in the current (sub)shell, so that
# daemons do not inherit our lock or a caller's pipes (a daemon holding the
# write end of `$(...)` or `| tee` would make the caller hang).
close_extra_fds() {
    local f fd
    for f in /proc/$BASHPID/fd/*; do
        fd=${f##*/}
        case $fd in 0 | 1 | 2 | 255 | '*') continue ;; esac
        eval "exec $fd>&-"
    done
}

# Serialise start/stop so parallel callers (e.g. concurrent test runs) do not
# start duplicate servers.
take_lock() {
    # Once per run: opening fd 9 again would drop the lock before taking it anew.
    [ -z "${lock_taken:-}" ] || return 0
    lock_taken=1
    mkdir -p "$state"
    exec 9>"$state/.lock"
    if command -v flock >/dev/null; then
        flock -w 300 9 || die "timed out waiting for $state/.lock"
    fi
}

export_lines() {
    printf 'export AMQP_URL=%s\n' "$1"
    printf 'export DATABASE_URL=%s\n' "$2"
    printf 'export REDIS_URL=%s\n' "$3"
}

# Both URLs set and not pointing at our private instances => caller brings
# its own servers. (If they equal the private URLs, e.g. after an earlier
# eval, we still make sure the private servers are running.)
using_external() {
    [ -n "${AMQP_URL:-}" ] && [ -n "${DATABASE_URL:-}" ] || return 1
    [ "$AMQP_URL" != "$private_amqp_url" ] || [ "$DATABASE_URL" != "$private_database_url" ]
}

# REDIS_URL set and not the private URL => the caller brings its own Redis. Decided apart from
# the other two: a caller with its own broker and database but no Redis still gets the private
# one, since only the benchmark's Redis design needs it and it is cheap to run.
redis_external() {
    [ -n "${REDIS_URL:-}" ] && [ "$REDIS_URL" != "$private_redis_url" ]
}

# ---------------------------------------------------------------- packages

# Highest installed PostgreSQL server bin dir; /usr/local/bin may hold other
# copies, so Debian's versioned dirs win and PATH is only a fallback.
pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
        echo "$d"
    elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v pg_ctl)"
    fi
}

have_packages() {
    [ -x "$rmq_bin/rabbitmq-server" ] && [ -n "$(pg_bindir)" ]
}

ensure_packages() {
    have_packages && return 0
    "$root/scripts/prerequisites.sh" services
    have_packages || die "packages installed but rabbitmq-server / initdb still not found"
}

have_redis() { [ -x "$redis_bin" ]; }

ensure_redis_package() {
    have_redis && return 0
    "$root/scripts/prerequisites.sh" redis
    have_redis || die "package installed but $redis_bin still not found"
}

# ---------------------------------------------------------------- RabbitMQ

# Run a RabbitMQ script (rabbitmq-server, rabbitmqctl, ...) against the
# private node. The scripts under /usr/lib/rabbitmq/bin are used directly:
# Debian's /usr/sbin wrappers switch to the rabbitmq user when run as root,
# which would drop HOME and pick up the system node's cookie.
# The environment of the selected node (see rmq_select_node for a cluster's).
rmq_set_vars() {
    rmq_vars=(
        HOME="$rmq_dir/home" # private .erlang.cookie
        RABBITMQ_NODENAME="$rmq_node"
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$amqp_port"
        RABBITMQ_DIST_PORT="$dist_port"
        RABBITMQ_MNESIA_BASE="$rmq_dir/mnesia"
        RABBITMQ_LOG_BASE="$rmq_dir/log"
        RABBITMQ_PID_FILE="$rmq_dir/rabbitmq.pid"
        RABBITMQ_ENABLED_PLUGINS_FILE="$rmq_dir/enabled_plugins"
        RABBITMQ_CONFIG_FILE="$rmq_dir/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$rmq_dir/advanced.config"
        # Our own (empty) env file instead of /etc/rabbitmq/rabbitmq-env.conf,
        # which names the system node.
        RABBITMQ_CONF_ENV_FILE="$rmq_dir/rabbitmq-env.conf"
        # Keep epmd and Erlang distribution on loopback.
        ERL_EPMD_ADDRESS=127.0.0.1
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    )
}
rmq_set_vars

rmq_env() {
    (
        close_extra_fds
        cd "$rmq_dir"
        exec env "${rmq_vars[@]}" "$@"
    )
}

# rabbitmqctl / rabbitmq-plugins against the private node, bounded in time.
# --foreground: the Erlang VM touches the terminal, and in the background process group timeout
# would otherwise put it in, it is stopped by SIGTTOU/SIGTTIN and hangs an interactive shell.
# Stdin from /dev/null for the same reason.
rmqctl() { rmq_env timeout --foreground 60 "$rmq_bin/rabbitmqctl" -n "$rmq_node" -q "$@" </dev/null; }
rmqplugins() { rmq_env timeout --foreground 60 "$rmq_bin/rabbitmq-plugins" -n "$rmq_node" -q "$@" </dev/null; }

rmq_write_config() {
    mkdir -p "$rmq_dir/home" "$rmq_dir/mnesia" "$rmq_dir/log"
    # Only the consistent-hash exchange; no management (15672) or other
    # listener-bearing plugins.
    echo '[rabbitmq_consistent_hash_exchange].' >"$rmq_dir/enabled_plugins"
    cat >"$rmq_dir/rabbitmq.conf" <<EOF
# Generated by scripts/services.sh; private seatrush node, loopback only.
listeners.tcp.default = 127.0.0.1:${amqp_port}
EOF
    if [ "$tls" = 1 ]; then
        cat >>"$rmq_dir/rabbitmq.conf" <<EOF
listeners.ssl.default = 127.0.0.1:${amqps_port}
ssl_options.cacertfile = $tls_dir/ca.pem
ssl_options.certfile = $tls_dir/server.pem
ssl_options.keyfile = $tls_dir/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
    fi
    if [ "$broker_nodes" -gt 1 ]; then
        # A node cut off from the others stops serving (its clients go to the
        # majority's nodes) and rejoins when the network heals.
        echo 'cluster_partition_handling = pause_minority' >>"$rmq_dir/rabbitmq.conf"
    fi
    echo '# Intentionally empty: keeps /etc/rabbitmq/rabbitmq-env.conf out.' \
        >"$rmq_dir/rabbitmq-env.conf"
    # Create the cookie up front so server and rabbitmqctl agree on it and do
    # not race to generate it. A cluster's nodes share the first node's.
    local cookie="$rmq_dir/home/.erlang.cookie"
    local first_cookie="$state/rabbitmq-$cluster_base/home/.erlang.cookie"
    if [ ! -s "$cookie" ] && [ "$cookie" != "$first_cookie" ] && [ -s "$first_cookie" ]; then
        (umask 077 && cp "$first_cookie" "$cookie")
        chmod 400 "$cookie"
    fi
    if [ ! -s "$cookie" ]; then
        (umask 077 && od -An -tx1 -N20 /dev/urandom | tr -d ' \n' | tr a-f A-F >"$cookie")
        chmod 400 "$cookie"
    fi
}

rmq_beam_pid() { read_pid "$rmq_dir/rabbitmq.pid"; }

# True if the given VM pid or server-script pid is alive and belongs to this
# node (the VM's command line carries our private HOME, the script's
# environment our node name). Zombies count as dead.
rmq_alive() {
    pid_is_ours "$1" "$rmq_dir/home" || pid_is_ours "$2" "RABBITMQ_NODENAME=$rmq_node"
}

# Cheap liveness check from the recorded pid files.
rmq_running() {
    rmq_alive "$(rmq_beam_pid)" "$(read_pid "$rmq_dir/server.pid")"
}

rmq_start() {
    if rmq_running && rmqctl await_startup --timeout 15 >/dev/null 2>&1; then
        say "rabbitmq: $rmq_node already running on 127.0.0.1:$amqp_port"
        return 0
    fi
    if rmq_running; then
        # Alive but not (yet) answering, e.g. still booting: wait, bounded.
        rmq_wait "$rmq_dir/log/startup.log"
        return 0
    fi
    # Another checkout on this machine (a CI clone, a second work tree) may already run the
    # private node on this port: a server that speaks AMQP there is reused rather than fought.
    if port_open "$amqp_port" && amqp_answers "$amqp_port"; then
        say "rabbitmq: reusing the AMQP server already on 127.0.0.1:$amqp_port"
        return 0
    fi
    local p
    for p in "$amqp_port" "$dist_port"; do
        port_open "$p" && die "rabbitmq: 127.0.0.1:$p is already in use by another process (set SEATRUSH_AMQP_PORT / SEATRUSH_AMQP_DIST_PORT)"
    done

    rmq_write_config
    rm -f "$rmq_dir/rabbitmq.pid" "$rmq_dir/server.pid"
    local startup_log="$rmq_dir/log/startup.log"
    say "rabbitmq: starting $rmq_node on 127.0.0.1:$amqp_port (dist $dist_port)"
    # The foreground server script runs in the background in its own session,
    # so the caller's Ctrl-C or closed pipes cannot reach it; it records its
    # own pid (it forwards SIGTERM to the VM, a fallback for stop). No fd of
    # ours stays open in it, so `eval "$(... start)"` returns.
    (
        close_extra_fds
        cd "$rmq_dir"
        exec setsid env "${rmq_vars[@]}" sh -c 'echo $$ >"$0"; exec "$@"' \
            "$rmq_dir/server.pid" "$rmq_bin/rabbitmq-server"
    ) </dev/null >"$startup_log" 2>&1 &

    rmq_wait "$startup_log"
}

rmq_wait() {
    local startup_log=$1 deadline=$((SECONDS + wait_secs))
    local node_log="$rmq_dir/log/$rmq_node.log"
    # The launcher writes server.pid as its first action.
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        [ -s "$rmq_dir/server.pid" ] && break
        sleep 0.5
    done
    while :; do
        if rmqctl await_startup --timeout 10 >/dev/null 2>&1 &&
            port_open "$amqp_port"; then
            break
        fi
        if ! rmq_running; then
            log_tail "$startup_log"
            log_tail "$node_log"
            die "rabbitmq: server process exited during startup"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log_tail "$startup_log"
            log_tail "$node_log"
            die "rabbitmq: $rmq_node not ready after ${wait_secs}s"
        fi
        sleep 1
    done
    # The exchange type is required by the application; fail loudly if the
    # plugin did not come up.
    local enabled
    enabled=$(rmqplugins list -e -m 2>/dev/null) || true
    if ! grep -qx rabbitmq_consistent_hash_exchange <<<"$enabled"; then
        log_tail "$node_log"
        die "rabbitmq: rabbitmq_consistent_hash_exchange is not enabled on $rmq_node"
    fi
    say "rabbitmq: ready on 127.0.0.1:$amqp_port (node $rmq_node)"
}

rmq_stop() {
    local beam server
    beam=$(rmq_beam_pid)
    server=$(read_pid "$rmq_dir/server.pid")
    if ! rmq_running; then
        say "rabbitmq: $rmq_node not running"
        rm -f "$rmq_dir/rabbitmq.pid" "$rmq_dir/server.pid"
        return 0
    fi
    say "rabbitmq: stopping $rmq_node"
    # Graceful stop addressed to this node only (never the system node).
    rmqctl stop >&2 || true
    local i
    for i in $(seq 1 60); do
        rmq_alive "$beam" "$server" || break
        sleep 0.5
    done
    # Fallback: signal only the recorded pids, after checking they are ours.
    local sig pid
    for sig in TERM KILL; do
        rmq_alive "$beam" "$server" || break
        for pid in "$beam" "$server"; do
            if rmq_alive "$pid" "$pid"; then
                say "rabbitmq: sending SIG$sig to recorded pid $pid"
                kill -s "$sig" "$pid" 2>/dev/null || true
            fi
        done
        for i in $(seq 1 30); do
            rmq_alive "$beam" "$server" || break
            sleep 0.5
        done
    done
    rm -f "$rmq_dir/rabbitmq.pid" "$rmq_dir/server.pid"
    say "rabbitmq: stopped"
}

rmq_status() {
    if rmq_running; then
        local ready="not accepting connections"
        port_open "$amqp_port" && ready="accepting connections"
        echo "rabbitmq: running (node $rmq_node, pid $(rmq_beam_pid), 127.0.0.1:$amqp_port $ready)"
        return 0
    fi
    echo "rabbitmq: not running (node $rmq_node, port $amqp_port)"
    return 1
}

# ---------------------------------------------------------------- RabbitMQ cluster

# Selects node i (1-based) of the cluster for the rmq_* functions.
rmq_select_node() {
    local i=$1
    case "$i" in
        '' | *[!0-9]*) die "rabbitmq: a node number is required (1 to $broker_nodes)" ;;
    esac
    [ "$i" -ge 1 ] && [ "$i" -le "$broker_nodes" ] ||
        die "rabbitmq: no node $i in a cluster of $broker_nodes (SEATRUSH_BROKER_NODES)"
    amqp_port=$((cluster_base + i - 1))
    dist_port=$(dist_of "$amqp_port")
    rmq_node="seatrush-${amqp_port}@localhost"
    rmq_dir="$state/rabbitmq-$amqp_port"
    rmq_set_vars
}

# Starts every node that is not running, then joins nodes 2..N to node 1
# (once: a node that was a member rejoins by itself when it restarts).
rmq_cluster_start() {
    local i first="seatrush-${cluster_base}@localhost"
    for i in $(seq 1 "$broker_nodes"); do
        rmq_select_node "$i"
        rmq_start
    done
    for i in $(seq 2 "$broker_nodes"); do
        rmq_select_node "$i"
        if rmqctl cluster_status 2>/dev/null | grep -q "$first"; then
            continue
        fi
        say "rabbitmq: joining $rmq_node to $first"
        rmqctl stop_app >&2
        rmqctl join_cluster "$first" >&2 || die "rabbitmq: $rmq_node could not join $first"
        rmqctl start_app >&2
        rmqctl await_startup --timeout 60 >/dev/null 2>&1 || die "rabbitmq: $rmq_node did not come back after joining"
    done
    say "rabbitmq: cluster of $broker_nodes nodes ready on 127.0.0.1:$cluster_base-$((cluster_base + broker_nodes - 1))"
}

rmq_cluster_stop() {
    local i
    for i in $(seq "$broker_nodes" -1 1); do
        rmq_select_node "$i"
        rmq_stop
    done
}

rmq_cluster_status() {
    local i rc=0
    for i in $(seq 1 "$broker_nodes"); do
        rmq_select_node "$i"
        rmq_status || rc=1
    done
    return "$rc"
}

# SIGKILL of one node's VM by its recorded pid: no shutdown, as a machine lost.
rmq_kill_node() {
    rmq_select_node "$1"
    local beam server
    beam=$(rmq_beam_pid)
    server=$(read_pid "$rmq_dir/server.pid")
    rmq_running || die "rabbitmq: node $1 ($rmq_node) is not running; nothing killed"
    say "rabbitmq: SIGKILL to $rmq_node (pid $beam)"
    local pid
    for pid in "$beam" "$server"; do
        if [ -n "$pid" ] && rmq_alive "$pid" "$pid"; then kill -s KILL "$pid" 2>/dev/null || true; fi
    done
    local n
    for n in $(seq 1 100); do
        rmq_alive "$beam" "$server" || break
        sleep 0.1
    done
    rm -f "$rmq_dir/rabbitmq.pid" "$rmq_dir/server.pid"
    say "rabbitmq: $rmq_node killed"
}

# Cuts a node off from the others, as a network partition would: each side is
# told a different wrong cookie for the other (the same one on both sides
# would let them reconnect), and their links are dropped, so neither can
# reconnect (pause_minority then pauses the node cut off). The nodes' own
# cookie stays, so rabbitmqctl still reaches every node. `heal` restores the
# cookies and reconnects.
rmq_cut() {
    local node=$1 cookie=$2 theirs=$3 i target others=""
    rmq_select_node "$node"
    target=$rmq_node
    for i in $(seq 1 "$broker_nodes"); do
        [ "$i" = "$node" ] || others="$others'seatrush-$((cluster_base + i - 1))@localhost',"
    done
    others=${others%,}
    rmqctl eval "[begin erlang:set_cookie(N, '$cookie'), erlang:disconnect_node(N) end || N <- [$others]], ok." >&2 ||
        die "rabbitmq: could not reach $target"
    for i in $(seq 1 "$broker_nodes"); do
        [ "$i" = "$node" ] && continue
        rmq_select_node "$i"
        rmq_running || continue
        rmqctl eval "erlang:set_cookie('$target', '$theirs'), erlang:disconnect_node('$target'), ok." >&2 || true
    done
}

rmq_isolate_node() {
    say "rabbitmq: cutting node $1 off from the other nodes"
    rmq_cut "$1" seatrush_cut_off_inside seatrush_cut_off_outside
}

rmq_heal_node() {
    rmq_select_node "$1"
    local cookie
    cookie=$(cat "$rmq_dir/home/.erlang.cookie")
    say "rabbitmq: reconnecting node $1 to the other nodes"
    rmq_cut "$1" "$cookie" "$cookie"
    rmq_select_node "$1"
    local i others=""
    for i in $(seq 1 "$broker_nodes"); do
        [ "$i" = "$1" ] || others="$others'seatrush-$((cluster_base + i - 1))@localhost',"
    done
    rmqctl eval "[net_adm:ping(N) || N <- [${others%,}]]." >&2
}

# ---------------------------------------------------------------- PostgreSQL

# initdb and pg_ctl refuse to run as root, so as root the cluster belongs to
# the `postgres` system user (created by the postgresql package); as anyone
# else it belongs to the invoking user and lives under the state dir. The
# postgres user must be able to reach the cluster's directory. A checkout
# under root's home (/root is 0700) or any other directory the postgres user
# cannot traverse would make initdb fail with "Permission denied", and
# opening up the caller's parent directories is not this script's business,
# so as root the cluster then lives in /tmp/seatrush-pg-<port> (owned by
# postgres, mode 0700; gone after a reboot, like any test data there).
pg_as_postgres() { is_root; }

pg_base() {
    if ! pg_as_postgres; then
        echo "$state/postgres-$pg_port"
        return 0
    fi
    # The state dir may not exist yet; check its nearest existing ancestor.
    local d=$state
    while [ ! -d "$d" ]; do d=$(dirname "$d"); done
    if id postgres >/dev/null 2>&1 &&
        (cd / && runuser -u postgres -- test -x "$d") 2>/dev/null; then
        echo "$state/postgres-$pg_port"
    else
        echo "/tmp/seatrush-pg-$pg_port"
    fi
}

# The cluster's paths. Decided only when needed, after ensure_packages: as
# root the choice depends on the postgres user, which the package install
# creates.
pg_paths() {
    [ -z "${pg_base_dir:-}" ] || return 0
    pg_base_dir=$(pg_base)
    pg_data="$pg_base_dir/data"
    pg_sock="$pg_base_dir/run"
    # Unix socket paths are limited to ~107 bytes; clients use TCP, so the
    # socket only has to be creatable.
    [ "${#pg_sock}" -le 80 ] || pg_sock="/tmp/seatrush-pg-sock-$pg_port"
    pg_log="$pg_base_dir/postgres.log"
}

# Run a PostgreSQL binary as the cluster owner, with extra fds closed and
# cwd=/ (the postgres user may not be able to read the caller's cwd).
pg() {
    local bin
    bin="$(pg_bindir)/$1"
    shift
    if pg_as_postgres; then
        (close_extra_fds && cd / && exec runuser -u postgres -- "$bin" "$@")
    else
        (close_extra_fds && cd / && exec "$bin" "$@")
    fi
}

pg_running() {
    pg_paths
    [ -f "$pg_data/PG_VERSION" ] && pg pg_ctl -D "$pg_data" status >/dev/null 2>&1
}

pg_init() {
    pg_paths
    [ -f "$pg_data/PG_VERSION" ] && return 0
    say "postgres: initialising cluster in $pg_data"
    mkdir -p "$pg_base_dir"
    if pg_as_postgres; then
        id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to own the cluster"
        chown postgres: "$pg_base_dir"
        chmod 700 "$pg_base_dir"
    fi
    pg initdb -D "$pg_data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        >"$state/initdb-$pg_port.log" 2>&1 || {
        log_tail "$state/initdb-$pg_port.log"
        die "postgres: initdb failed"
    }
}

pg_start() {
    mkdir -p "$state"
    pg_paths
    if pg_running; then
        say "postgres: already running on 127.0.0.1:$pg_port ($pg_data)"
    elif port_open "$pg_port" && pg_answers "$pg_port"; then
        # Started from another checkout on this machine: reuse it, as for RabbitMQ.
        say "postgres: reusing the server already on 127.0.0.1:$pg_port"
        return 0
    else
        port_open "$pg_port" && die "postgres: 127.0.0.1:$pg_port is already in use by another process (set SEATRUSH_PG_PORT)"
        pg_init
        if pg_as_postgres; then
            install -d -o postgres -m 700 "$pg_sock"
        else
            mkdir -p "$pg_sock"
        fi
        say "postgres: starting on 127.0.0.1:$pg_port ($pg_data)"
        local ssl_opts=""
        if [ "$tls" = 1 ]; then
            # The server wants its key private to the cluster's owner.
            install -m 600 "$tls_dir/server.key" "$pg_base_dir/server.key"
            install -m 644 "$tls_dir/server.pem" "$pg_base_dir/server.pem"
            if pg_as_postgres; then chown postgres: "$pg_base_dir/server.key" "$pg_base_dir/server.pem"; fi
            ssl_opts="-c ssl=on -c ssl_cert_file=$pg_base_dir/server.pem -c ssl_key_file=$pg_base_dir/server.key"
        fi
        if ! pg pg_ctl -D "$pg_data" -l "$pg_log" \
            -o "-p $pg_port -k $pg_sock -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200 $ssl_opts ${pg_pair_opts:-}" \
            start -w -t "$wait_secs" >&2; then
            log_tail "$pg_log"
            die "postgres: failed to start within ${wait_secs}s"
        fi
    fi
    pg_wait
    if [ "$(psql_admin -tAc 'select pg_is_in_recovery()')" = t ]; then
        say "postgres: standby ready on 127.0.0.1:$pg_port (following the primary)"
    else
        pg_bootstrap
    fi
}

pg_wait() {
    pg_paths
    local deadline=$((SECONDS + wait_secs))
    until pg pg_isready -q -h 127.0.0.1 -p "$pg_port" -d postgres -U postgres; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log_tail "$pg_log"
            die "postgres: not accepting connections after ${wait_secs}s"
        fi
        sleep 1
    done
}

psql_admin() {
    pg psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres "$@"
}

# Role `seatrush` (superuser: tests create their own databases) and database
# `seatrush` owned by it.
pg_bootstrap() {
    if [ "$(psql_admin -tAc "select 1 from pg_roles where rolname = 'seatrush'")" != 1 ]; then
        say "postgres: creating role seatrush"
        psql_admin -c 'create role seatrush with login superuser createdb'
    fi
    if [ "$(psql_admin -tAc "select 1 from pg_database where datname = 'seatrush'")" != 1 ]; then
        say "postgres: creating database seatrush"
        psql_admin -c 'create database seatrush owner seatrush'
    fi
    say "postgres: ready on 127.0.0.1:$pg_port (database seatrush)"
}

pg_stop() {
    pg_paths
    if ! pg_running; then
        say "postgres: not running ($pg_data)"
        return 0
    fi
    say "postgres: stopping ($pg_data)"
    # pg_ctl addresses this data directory only; fast = disconnect clients.
    pg pg_ctl -D "$pg_data" stop -m fast -w -t "$wait_secs" >&2 ||
        pg pg_ctl -D "$pg_data" stop -m immediate -w -t 30 >&2
    say "postgres: stopped"
}

pg_status() {
    pg_paths
    if pg_running; then
        local ready="not accepting connections"
        pg pg_isready -q -h 127.0.0.1 -p "$pg_port" && ready="accepting connections"
        echo "postgres: running (pid $(head -n 1 "$pg_data/postmaster.pid" 2>/dev/null || echo '?'), 127.0.0.1:$pg_port $ready, $pg_data)"
        return 0
    fi
    echo "postgres: not running (port $pg_port, $pg_data)"
    return 1
}

# ---------------------------------------------------------------- PostgreSQL pair

# Every commit waits until a standby has it on disk; WAL is kept for a standby
# that falls behind.
pg_pair_opts="-c wal_level=replica -c max_wal_senders=10 -c wal_keep_size=1GB -c hot_standby=on -c synchronous_commit=on"

# Selects member i (1 or 2) for the pg_* functions.
pg_select_member() {
    case "${1:-}" in
        1 | 2) ;;
        *) die "postgres: a member number is required (1 or 2)" ;;
    esac
    pg_port=$((pg_pair_base + $1 - 1))
    pg_base_dir=
    pg_paths
}

# Whether the selected member runs and takes writes.
pg_is_primary() {
    pg_running && [ "$(psql_admin -tAc 'select pg_is_in_recovery()' 2>/dev/null)" = f ]
}

# The member that takes writes, or nothing.
pg_primary_member() {
    local i
    for i in 1 2; do
        pg_select_member "$i"
        if pg_is_primary; then
            echo "$i"
            return 0
        fi
    done
}

# Makes the selected (stopped, empty) member a standby of member $1: a base
# backup that also writes the standby's connection settings.
pg_clone_from() {
    local from_port=$((pg_pair_base + $1 - 1))
    say "postgres: cloning 127.0.0.1:$pg_port from the primary on 127.0.0.1:$from_port"
    mkdir -p "$pg_base_dir"
    if pg_as_postgres; then
        chown postgres: "$pg_base_dir"
        chmod 700 "$pg_base_dir"
    fi
    pg pg_basebackup -h 127.0.0.1 -p "$from_port" -U postgres -D "$pg_data" -R -X stream -c fast \
        -d "application_name=member$((pg_port - pg_pair_base + 1))" >&2 ||
        die "postgres: the base backup from 127.0.0.1:$from_port failed"
}

# Commits wait for a standby while one is attached, and not otherwise: a
# primary left alone after a failover keeps taking commits (the standby that
# comes back catches up, and the waits resume).
pg_require_standby() {
    local names=$1
    psql_admin -c "alter system set synchronous_standby_names = '$names'" -c 'select pg_reload_conf()' >/dev/null
}

pg_pair_start() {
    local primary
    primary=$(pg_primary_member)
    if [ -z "$primary" ]; then
        pg_select_member 1
        if [ -f "$pg_data/PG_VERSION" ] && [ -f "$pg_data/standby.signal" ]; then
            pg_select_member 2
        fi
        primary=$((pg_port - pg_pair_base + 1))
        pg_start
    fi
    local standby=$((3 - primary))
    pg_select_member "$standby"
    if ! pg_running; then
        [ -f "$pg_data/PG_VERSION" ] || pg_clone_from "$primary"
        pg_start
    fi
    pg_select_member "$primary"
    pg_require_standby '*'
    say "postgres: member $primary is the primary, member $standby its synchronous standby"
}

pg_pair_stop() {
    local i
    for i in 2 1; do
        pg_select_member "$i"
        pg_stop
    done
}

# SIGKILL of a member's postmaster and every process below it, as a machine
# lost: no shutdown checkpoint, the clients' connections cut.
pg_kill_member() {
    pg_select_member "$1"
    pg_running || die "postgres: member $1 is not running; nothing killed"
    local postmaster children
    postmaster=$(head -n 1 "$pg_data/postmaster.pid")
    children=$(ps -o pid= --ppid "$postmaster" || true)
    say "postgres: SIGKILL to member $1 (postmaster $postmaster and its processes)"
    # shellcheck disable=SC2086
    kill -s KILL "$postmaster" $children 2>/dev/null || true
    local i
    for i in $(seq 1 100); do
        kill -0 "$postmaster" 2>/dev/null || break
        sleep 0.1
    done
    say "postgres: member $1 killed"
}

# Promotes a standby; alone, it takes commits without waiting for a standby.
pg_promote_member() {
    pg_select_member "$1"
    say "postgres: promoting member $1"
    pg pg_ctl -D "$pg_data" promote -w -t "$wait_secs" >&2 || die "postgres: member $1 was not promoted"
    pg_require_standby ''
}

# Makes a member (the old primary after a failover) a standby of the current
# primary again: its data is replaced by a fresh base backup.
pg_rejoin_member() {
    local primary
    primary=$(pg_primary_member)
    [ -n "$primary" ] || die "postgres: no primary to rejoin"
    [ "$primary" != "$1" ] || die "postgres: member $1 is the primary"
    pg_select_member "$1"
    if pg_running; then pg_stop; fi
    say "postgres: member $1 rejoins as a standby of member $primary"
    rm -rf "$pg_data"
    pg_clone_from "$primary"
    pg_start
    pg_select_member "$primary"
    pg_require_standby '*'
}

# ---------------------------------------------------------------- Redis

# Debian's redis-server runs as whoever starts it, so as root and as anyone
# else the server belongs to the invoking user and keeps its state in
# <state>/redis-<port>. It daemonizes itself (it forks, detaches with setsid
# and points its stdio at /dev/null) and records its pid in redis.pid there.

redis_conf() { echo "$redis_dir/redis.conf"; }
redis_pid() { read_pid "$redis_dir/redis.pid"; }

# The recorded pid is alive and its command line names our config file
# (set-proc-title is off, so Redis keeps its command line as started).
redis_running() { pid_is_ours "$(redis_pid)" "$(redis_conf)"; }

# True if a Redis server on 127.0.0.1:<port> answers PING. A server still
# replaying its append-only file answers -LOADING, which is not ready.
redis_answers() {
    local reply
    reply=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "PING\r\n" >&3
        head -c 5 <&3' _ "$1" 2>/dev/null) || return 1
    [ "$reply" = "+PONG" ]
}

redis_write_config() {
    case $redis_fsync in
        always | everysec | no) ;;
        *) die "SEATRUSH_REDIS_FSYNC must be always, everysec or no (not '$redis_fsync')" ;;
    esac
    mkdir -p "$redis_dir"
    # Only the append-only file persists: no RDB snapshots (save ""), whose
    # fork would double the memory at the worst moment and which add nothing
    # the AOF does not already keep.
    cat >"$(redis_conf)" <<EOF
# Generated by scripts/services.sh; private seatrush Redis, loopback only.
bind 127.0.0.1
protected-mode yes
port $redis_port
daemonize yes
pidfile "$redis_dir/redis.pid"
logfile "$redis_dir/redis.log"
dir "$redis_dir"
set-proc-title no
save ""
appendonly yes
appendfsync $redis_fsync
EOF
}

redis_start() {
    if redis_running; then
        redis_wait
        say "redis: already running on 127.0.0.1:$redis_port ($redis_dir)"
        return 0
    fi
    if port_open "$redis_port"; then
        # Started from another checkout on this machine: reuse it, as for the others.
        if redis_answers "$redis_port"; then
            say "redis: reusing the Redis server already on 127.0.0.1:$redis_port"
            return 0
        fi
        die "redis: 127.0.0.1:$redis_port is already in use by another process (set SEATRUSH_REDIS_PORT)"
    fi
    redis_write_config
    rm -f "$redis_dir/redis.pid"
    say "redis: starting on 127.0.0.1:$redis_port ($redis_dir, appendfsync $redis_fsync)"
    # The foreground part returns once the server has forked; what it says
    # before that goes to startup.log. No fd of ours stays open in the
    # daemon, so `eval "$(... start)"` returns.
    if ! (
        close_extra_fds
        cd "$redis_dir"
        exec "$redis_bin" "$(redis_conf)"
    ) </dev/null >"$redis_dir/startup.log" 2>&1; then
        log_tail "$redis_dir/startup.log"
        log_tail "$redis_dir/redis.log"
        die "redis: redis-server did not start"
    fi
    redis_wait
}

redis_wait() {
    local deadline=$((SECONDS + wait_secs))
    until redis_answers "$redis_port"; do
        # The daemon writes its pid file before it loads the AOF; a pid file
        # whose process is gone means it exited during startup.
        if [ -s "$redis_dir/redis.pid" ] && ! redis_running; then
            log_tail "$redis_dir/redis.log"
            die "redis: server process exited during startup"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log_tail "$redis_dir/redis.log"
            die "redis: not answering on 127.0.0.1:$redis_port after ${wait_secs}s"
        fi
        sleep 0.2
    done
    say "redis: ready on 127.0.0.1:$redis_port"
}

# Waits, at most <tries> tenths of a second, until <pid> is no longer our
# server; a zombie (empty command line) counts as gone.
redis_gone() {
    local pid=$1 tries=$2 i
    for i in $(seq 1 "$tries"); do
        pid_is_ours "$pid" "$(redis_conf)" || return 0
        sleep 0.1
    done
    return 1
}

redis_stop() {
    local pid
    pid=$(redis_pid)
    if ! redis_running; then
        say "redis: not running ($redis_dir)"
        rm -f "$redis_dir/redis.pid"
        return 0
    fi
    say "redis: stopping (pid $pid)"
    # SIGTERM is Redis's graceful shutdown: it syncs the AOF, then exits.
    kill -s TERM "$pid" 2>/dev/null || true
    if ! redis_gone "$pid" 600; then
        say "redis: still running after 60s, sending SIGKILL to recorded pid $pid"
        kill -s KILL "$pid" 2>/dev/null || true
        redis_gone "$pid" 100 || die "redis: pid $pid survived SIGKILL"
    fi
    rm -f "$redis_dir/redis.pid"
    say "redis: stopped"
}

redis_kill() {
    local pid
    pid=$(redis_pid)
    redis_running || die "redis: no private server runs on 127.0.0.1:$redis_port ($redis_dir); nothing killed"
    say "redis: SIGKILL to pid $pid"
    kill -s KILL "$pid" 2>/dev/null || true
    redis_gone "$pid" 100 || die "redis: pid $pid survived SIGKILL"
    rm -f "$redis_dir/redis.pid"
    say "redis: killed"
}

redis_status() {
    if redis_running; then
        local ready="not answering"
        redis_answers "$redis_port" && ready="answering"
        echo "redis: running (pid $(redis_pid), 127.0.0.1:$redis_port $ready, $redis_dir)"
        return 0
    fi
    echo "redis: not running (port $redis_port, $redis_dir)"
    return 1
}

# ---------------------------------------------------------------- commands

# The URLs start and env print: the caller's where it brings its own servers, ours otherwise.
chosen_urls() {
    if using_external; then
        amqp_url=$AMQP_URL database_url=$DATABASE_URL
    else
        amqp_url=$private_amqp_url database_url=$private_database_url
    fi
    if redis_external; then redis_url=$REDIS_URL; else redis_url=$private_redis_url; fi
}

cmd_start() {
    chosen_urls
    if using_external; then
        say "AMQP_URL and DATABASE_URL already set; using those servers, starting neither"
    else
        take_lock
        ensure_packages
        pg_any_start
        if [ "$broker_nodes" -gt 1 ]; then rmq_cluster_start; else rmq_start; fi
    fi
    if redis_external; then
        say "REDIS_URL already set; using that server"
    else
        take_lock
        ensure_redis_package
        redis_start
    fi
    export_lines "$amqp_url" "$database_url" "$redis_url"
}

cmd_env() {
    chosen_urls
    export_lines "$amqp_url" "$database_url" "$redis_url"
}

cmd_stop() {
    take_lock
    if have_redis; then redis_stop; else say "redis: not installed"; fi
    if [ -x "$rmq_bin/rabbitmqctl" ]; then rmq_any_stop; else say "rabbitmq: not installed"; fi
    if [ -n "$(pg_bindir)" ]; then pg_any_stop; else say "postgres: not installed"; fi
}

pg_any_start() { if [ "$pg_standby" = 1 ]; then pg_pair_start; else pg_start; fi; }
pg_any_stop() { if [ "$pg_standby" = 1 ]; then pg_pair_stop; else pg_stop; fi; }

rmq_any_stop() { if [ "$broker_nodes" -gt 1 ]; then rmq_cluster_stop; else rmq_stop; fi; }

cmd_start_db() {
    take_lock
    ensure_packages
    if [ "$pg_standby" = 1 ]; then
        [ "$tls" = 1 ] && die "postgres: SEATRUSH_TLS is for a single server, not a pair"
        pg_pair_start
    else
        tls_ensure
        pg_start
    fi
    echo "export DATABASE_URL=$private_database_url"
    tls_exports
}

pair_only() {
    [ "$pg_standby" = 1 ] || die "$1 is for a primary with a standby: set SEATRUSH_PG_STANDBY=1"
}

# No lock for the faults (see the broker's).
cmd_kill_db_member() { pair_only kill-db-member; pg_kill_member "${1:-}"; }

cmd_promote_db_member() {
    pair_only promote-db-member
    take_lock
    pg_promote_member "${1:-}"
}

cmd_rejoin_db_member() {
    pair_only rejoin-db-member
    take_lock
    pg_rejoin_member "${1:-}"
}

cmd_db_primary() {
    pair_only db-primary
    local primary
    primary=$(pg_primary_member)
    [ -n "$primary" ] || die "postgres: no member takes writes"
    echo "$primary"
}

cmd_restart_db() {
    take_lock
    pg_paths
    if pg_running; then
        say "postgres: immediate shutdown ($pg_data)"
        pg pg_ctl -D "$pg_data" stop -m immediate -w -t 30 >&2
    fi
    pg_start
}

cmd_stop_db() {
    take_lock
    if [ -n "$(pg_bindir)" ]; then pg_any_stop; else say "postgres: not installed"; fi
}

cmd_start_broker() {
    take_lock
    ensure_packages
    if [ "$broker_nodes" -gt 1 ]; then
        [ "$tls" = 1 ] && die "rabbitmq: SEATRUSH_TLS is for a single node, not a cluster"
        rmq_cluster_start
    else
        tls_ensure
        rmq_start
    fi
    echo "export AMQP_URL=$private_amqp_url"
    if [ "$tls" = 1 ]; then echo "export AMQPS_URL=$private_amqps_url"; fi
    tls_exports
}

cmd_restart_broker() {
    take_lock
    if [ "$broker_nodes" -gt 1 ]; then
        rmq_cluster_stop
        rmq_cluster_start
    else
        rmq_stop
        rmq_start
    fi
}

cmd_stop_broker() {
    take_lock
    if [ -x "$rmq_bin/rabbitmqctl" ]; then rmq_any_stop; else say "rabbitmq: not installed"; fi
}

cluster_only() {
    [ "$broker_nodes" -gt 1 ] || die "$1 is for a cluster: set SEATRUSH_BROKER_NODES (for example 3)"
}

# No lock for the faults: a test injects them at moments of its choosing, and
# each addresses one node by its recorded pid or its name.
cmd_kill_broker_node() { cluster_only kill-broker-node; rmq_kill_node "${1:-}"; }
cmd_isolate_broker_node() { cluster_only isolate-broker-node; rmq_isolate_node "${1:-}"; }
cmd_heal_broker_node() { cluster_only heal-broker-node; rmq_heal_node "${1:-}"; }

# The leader of each quorum queue, `queue<TAB>node` per line, as the first
# running node sees them.
cmd_queue_leaders() {
    cluster_only queue-leaders
    local i
    for i in $(seq 1 "$broker_nodes"); do
        rmq_select_node "$i"
        rmq_running || continue
        rmqctl list_queues name leader --no-table-headers && return 0
    done
    die "rabbitmq: no node of the cluster answers"
}

cmd_busiest_broker_node() {
    local leaders i best=0 most=-1 led
    leaders=$(cmd_queue_leaders) || exit 1
    for i in $(seq 1 "$broker_nodes"); do
        led=$(printf '%s\n' "$leaders" | awk -F'\t' -v n="seatrush-$((cluster_base + i - 1))@localhost" \
            '{ gsub(/[[:space:]]+$/, "", $2) } $2 == n { c++ } END { print c + 0 }')
        if [ "$led" -gt "$most" ]; then
            most=$led
            best=$i
        fi
    done
    [ "$most" -gt 0 ] || die "rabbitmq: no queue has a leader"
    echo "$best"
}

cmd_start_broker_node() {
    cluster_only start-broker-node
    take_lock
    rmq_select_node "${1:-}"
    rmq_start
}

cmd_stop_broker_node() {
    cluster_only stop-broker-node
    take_lock
    rmq_select_node "${1:-}"
    rmq_stop
}

cmd_start_redis() {
    take_lock
    ensure_redis_package
    redis_start
    echo "export REDIS_URL=$private_redis_url"
}

cmd_stop_redis() {
    take_lock
    if have_redis; then redis_stop; else say "redis: not installed"; fi
}

# No lock: a crash test kills at a moment of its choosing, and a SIGKILL by a
# checked pid cannot race with anything the lock guards.
cmd_kill_redis() { redis_kill; }

cmd_restart_redis() {
    take_lock
    if redis_running; then redis_kill; fi
    ensure_redis_package
    redis_start
}

cmd_status() {
    local rc=0
    if [ ! -x "$rmq_bin/rabbitmqctl" ]; then
        echo "rabbitmq: not installed"
        rc=1
    elif [ "$broker_nodes" -gt 1 ]; then
        rmq_cluster_status || rc=1
    else
        rmq_status || rc=1
    fi
    if [ -z "$(pg_bindir)" ]; then
        echo "postgres: not installed"
        rc=1
    elif [ "$pg_standby" = 1 ]; then
        local i
        for i in 1 2; do
            pg_select_member "$i"
            pg_status || rc=1
        done
    else
        pg_status || rc=1
    fi
    if have_redis; then redis_status || rc=1; else echo "redis: not installed"; rc=1; fi
    return "$rc"
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    start-db) cmd_start_db ;;
    restart-db) cmd_restart_db ;;
    stop-db) cmd_stop_db ;;
    start-broker) cmd_start_broker ;;
    restart-broker) cmd_restart_broker ;;
    stop-broker) cmd_stop_broker ;;
    start-redis) cmd_start_redis ;;
    restart-redis) cmd_restart_redis ;;
    stop-redis) cmd_stop_redis ;;
    kill-redis) cmd_kill_redis ;;
    kill-broker-node) cmd_kill_broker_node "${2:-}" ;;
    start-broker-node) cmd_start_broker_node "${2:-}" ;;
    stop-broker-node) cmd_stop_broker_node "${2:-}" ;;
    isolate-broker-node) cmd_isolate_broker_node "${2:-}" ;;
    heal-broker-node) cmd_heal_broker_node "${2:-}" ;;
    queue-leaders) cmd_queue_leaders ;;
    busiest-broker-node) cmd_busiest_broker_node ;;
    kill-db-member) cmd_kill_db_member "${2:-}" ;;
    promote-db-member) cmd_promote_db_member "${2:-}" ;;
    rejoin-db-member) cmd_rejoin_db_member "${2:-}" ;;
    db-primary) cmd_db_primary ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2 ;;
    *)
        say "unknown command: $1 (expected start|stop|status|env|start-db|restart-db|stop-db|start-broker|restart-broker|stop-broker|start-redis|restart-redis|stop-redis|kill-redis|kill-broker-node|start-broker-node|stop-broker-node|isolate-broker-node|heal-broker-node|queue-leaders|busiest-broker-node|kill-db-member|promote-db-member|rejoin-db-member|db-primary)"
        exit 2
        ;;
esac
