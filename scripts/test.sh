#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and property tests, and the integration tests
# against a real RabbitMQ, PostgreSQL and Redis (the benchmark's Redis design). Installs what is
# missing, in every case (a C compiler; Debian's rabbitmq-server, postgresql and redis-server
# packages; chromium and chromium-driver, as a test drives the student's page in headless Chromium;
# through sudo when not root; scripts/prerequisites.sh says what and why). Uses
# AMQP_URL/DATABASE_URL when both are set, and REDIS_URL when set; otherwise starts
# project-private services on loopback.
#
# A passing run prints the test results, not the workers' logs: worker processes log to files under
# target/test-logs/<module>/<test>/, in-process workers through libtest's captured output (and to
# target/test-logs/in-process.log). A failing test shows its in-process log lines with its output
# and names its log directory. Extra arguments go to the test binaries (for example --nocapture,
# which also shows the in-process logs as they happen).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# A failed step stops the script here with its cause, not later with a misleading one.
fail() {
    echo "test: $*" >&2
    exit 1
}

# Everything, even when AMQP_URL, DATABASE_URL and REDIS_URL name the user's servers: the suite also
# starts private servers of its own (the fault tests' PostgreSQL and RabbitMQ, the crash run's
# Redis) through scripts/services.sh, which would otherwise install what is missing from inside
# tests running in parallel (apt-get against apt-get, or sudo asking for a password mid-run).
scripts/prerequisites.sh compiler services browser || fail "could not install the prerequisites (see above)"

# The exports are captured first: a failure inside `eval "$(...)"` would not stop the script.
exports=$(scripts/services.sh start) || fail "could not start the services (see above)"
eval "$exports"
export AMQP_URL DATABASE_URL REDIS_URL

# rustfmt and clippy come with rustup's default profile; add them if this toolchain lacks them.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "test: adding the rustfmt and clippy components (rustup component add)" >&2
    rustup component add rustfmt clippy
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features failpoints -- -D warnings
# The runtime alone (the worker's build, without the tooling) must build and lint clean too.
cargo clippy -p seatrush --no-default-features -- -D warnings
# ... and links none of the tooling's libraries (charts, progress bars, the benchmark).
# The tree is captured first: a failing cargo tree in the pipe would read as "no such dependency".
tree=$(cargo tree -p seatrush --no-default-features -e normal --prefix none) ||
    fail "cargo tree failed (see above)"
if grep -E '^(seatrush-tools|plotters|indicatif) ' <<<"$tree"; then
    echo "the worker's build depends on the tooling (above)" >&2
    exit 1
fi
# failpoints compiles in the named fail points the crash tests inject faults with.
cargo test --workspace --features failpoints -- "$@"
# The container image's build command (docker/Dockerfile), checked here where no Docker engine
# runs: the release binary builds from exactly Cargo.lock.
cargo build --release --locked --bin seatrush
