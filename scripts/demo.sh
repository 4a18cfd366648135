#!/usr/bin/env bash
# The demo: starts (or reuses) the services, builds seatrush, and runs a flash crowd against a
# real worker with a short report and the audit. Extra arguments go to `seatrush demo`
# (--courses, --seats, --students).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Stop at the end what this script started, unless asked to keep it (SEATRUSH_KEEP_SERVICES=1).
started_here=false
if [ -z "${AMQP_URL:-}" ] || [ -z "${DATABASE_URL:-}" ]; then
    scripts/services.sh status >/dev/null 2>&1 || started_here=true
fi
stop_services() {
    if $started_here && [ "${SEATRUSH_KEEP_SERVICES:-0}" != 1 ]; then
        scripts/services.sh stop
    fi
}
trap stop_services EXIT

eval "$(scripts/services.sh start)"
export AMQP_URL DATABASE_URL

cargo build --release --quiet
target/release/seatrush migrate
# The seeds' opening day, with a short waitlist per course unless one is given.
case " $* " in
    *" --waitlist"*) ;;
    *) set -- --waitlist 10 "$@" ;;
esac
target/release/seatrush demo "$@"
