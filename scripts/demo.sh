#!/usr/bin/env bash
# The demo: installs what is missing (a C compiler, and Debian's rabbitmq-server, postgresql and
# redis-server packages, through sudo when not root; scripts/prerequisites.sh says what and why),
# starts (or reuses) the project-private services (Redis serves only the benchmark), builds seatrush, and runs a flash crowd against a real
# worker with a short report and the audit. Extra arguments go to `seatrush demo` (--courses,
# --seats, --students). With AMQP_URL and DATABASE_URL both set, it uses those servers instead and
# installs no services.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# A failed step stops the script here with its cause, not later with a misleading one.
fail() {
    echo "demo: $*" >&2
    exit 1
}

using_external=false
if [ -n "${AMQP_URL:-}" ] && [ -n "${DATABASE_URL:-}" ]; then using_external=true; fi

if $using_external; then
    # The private Redis still runs unless REDIS_URL names one.
    redis=redis
    if [ -n "${REDIS_URL:-}" ]; then redis=; fi
    scripts/prerequisites.sh compiler $redis || fail "could not install the prerequisites (see above)"
else
    scripts/prerequisites.sh compiler services || fail "could not install the prerequisites (see above)"
fi

# Stop at the end what this script started, unless asked to keep it (SEATRUSH_KEEP_SERVICES=1).
started_here=false
if ! $using_external; then
    scripts/services.sh status >/dev/null 2>&1 || started_here=true
fi
stop_services() {
    if $started_here && [ "${SEATRUSH_KEEP_SERVICES:-0}" != 1 ]; then
        scripts/services.sh stop
    fi
}
trap stop_services EXIT

# The exports are captured first: a failure inside `eval "$(...)"` would not stop the script.
exports=$(scripts/services.sh start) || fail "could not start the services (see above)"
eval "$exports"
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
