#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and property tests, and the integration tests
# against a real RabbitMQ and PostgreSQL. Uses AMQP_URL/DATABASE_URL when both are set; otherwise
# installs (if needed) and starts project-private services on loopback.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

eval "$(scripts/services.sh start)"
export AMQP_URL DATABASE_URL

# rustfmt and clippy come with rustup's default profile; add them if this toolchain lacks them.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features failpoints -- -D warnings
# The runtime alone (the worker's build, without the tooling) must build and lint clean too.
cargo clippy -p seatrush --no-default-features -- -D warnings
# ... and links none of the tooling's libraries (charts, progress bars, the benchmark).
if cargo tree -p seatrush --no-default-features -e normal --prefix none \
    | grep -E '^(seatrush-tools|plotters|indicatif) '; then
    echo "the worker's build depends on the tooling (above)" >&2
    exit 1
fi
# failpoints compiles in the named fail points the crash tests inject faults with.
cargo test --workspace --features failpoints -- "$@"
# The container image's build command (docker/Dockerfile), checked here where no Docker engine
# runs: the release binary builds from exactly Cargo.lock.
cargo build --release --locked --bin seatrush
