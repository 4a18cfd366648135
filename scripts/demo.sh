#!/usr/bin/env bash
# The demo: installs what is missing (a C compiler, and Debian's rabbitmq-server, postgresql and
# redis-server packages, through sudo when not root; scripts/prerequisites.sh says what and why),
# starts (or reuses) the project-private RabbitMQ and PostgreSQL (not Redis, which serves only the
# benchmark), builds seatrush, and runs a flash crowd against a real worker with a short report and
# the audit. At the end it stops the services it started itself, and only those. Extra arguments
# go to `seatrush demo` (--courses, --seats, --students). With AMQP_URL and DATABASE_URL both set
# (to servers other than the private ones), it uses those servers instead and installs and starts
# no services.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# A failed step stops the script here with its cause, not later with a misleading one.
fail() {
    echo "demo: $*" >&2
    exit 1
}

# The user's own servers, told from the private ones as scripts/services.sh tells them: AMQP_URL and
# DATABASE_URL both set, and not to the private instances' URLs (which an earlier
# `eval "$(scripts/services.sh start)"` leaves set; those are started here as usual).
chosen=$(env -u REDIS_URL scripts/services.sh env) || fail "could not read the services' URLs (see above)"
private=$(env -u AMQP_URL -u DATABASE_URL -u REDIS_URL scripts/services.sh env) ||
    fail "could not read the services' URLs (see above)"
using_external=false
if [ "$chosen" != "$private" ]; then using_external=true; fi

if $using_external; then
    scripts/prerequisites.sh compiler || fail "could not install the prerequisites (see above)"
else
    scripts/prerequisites.sh compiler services || fail "could not install the prerequisites (see above)"
fi

# Stop at the end what this script started, and only that (scripts/test.sh leaves the services
# running for its next run), unless asked to keep it (SEATRUSH_KEEP_SERVICES=1). A service counts
# as running only if `scripts/services.sh status` says so of all of it (a cluster's every node, a
# pair's both members).
runs() { grep -q "^$1: running" <<<"$status" && ! grep -q "^$1: not " <<<"$status"; }
broker_started_here=false
db_started_here=false
if ! $using_external; then
    status=$(scripts/services.sh status 2>/dev/null) || true
    runs rabbitmq || broker_started_here=true
    runs postgres || db_started_here=true
fi
stop_services() {
    [ "${SEATRUSH_KEEP_SERVICES:-0}" != 1 ] || return 0
    # Each is stopped even when the other fails to stop (scripts/services.sh says why).
    if $broker_started_here; then scripts/services.sh stop-broker || true; fi
    if $db_started_here; then scripts/services.sh stop-db || true; fi
}
trap stop_services EXIT

if $using_external; then
    echo "demo: using the servers AMQP_URL and DATABASE_URL name; starting none" >&2
else
    # RabbitMQ and PostgreSQL alone: `scripts/services.sh start` would also start the private
    # Redis, which the demo never uses. The exports are captured first: a failure inside
    # `eval "$(...)"` would not stop the script.
    exports=$(scripts/services.sh start-db) || fail "could not start PostgreSQL (see above)"
    eval "$exports"
    exports=$(scripts/services.sh start-broker) || fail "could not start RabbitMQ (see above)"
    eval "$exports"
fi
export AMQP_URL DATABASE_URL

# Cargo shows what it compiles; the first release build takes several minutes.
echo "demo: building seatrush (cargo build --release)" >&2
cargo build --release || fail "the build failed (see above)"
target/release/seatrush migrate
# The seeds' opening day, with a short waitlist per course unless one is given.
case " $* " in
    *" --waitlist"*) ;;
    *) set -- --waitlist 10 "$@" ;;
esac
target/release/seatrush demo "$@"
