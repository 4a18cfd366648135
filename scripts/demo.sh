#!/usr/bin/env bash
# The demo: starts (or reuses) the services, builds seatrush, and runs a flash crowd against a
# real worker with a short report and the audit. Extra arguments go to `seatrush demo`
# (--courses, --seats, --students).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

eval "$(scripts/services.sh start)"
export AMQP_URL DATABASE_URL

cargo build --release --quiet
target/release/seatrush migrate
exec target/release/seatrush demo "$@"
