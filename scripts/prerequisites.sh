#!/usr/bin/env bash
# Installs the Debian packages seatrush's scripts need and this machine lacks, saying which and
# why before it does. Nothing is installed when everything is already there.
#
# Usage: scripts/prerequisites.sh [compiler] [services] [redis] [browser]
#   compiler  a C compiler and the C library's development files (`gcc`, `libc6-dev`) when
#             `cc` cannot link a program: Rust links its programs with it
#   services  `rabbitmq-server`, `postgresql` and `redis-server`, whose programs
#             scripts/services.sh runs as project-private instances, and `procps` when `ps` is
#             missing (minimal images): scripts/services.sh finds a PostgreSQL member's processes
#             with it
#   redis     `redis-server` alone (scripts/services.sh still runs a private Redis, for the
#             benchmark's Redis design, when AMQP_URL and DATABASE_URL are set but REDIS_URL is
#             not)
#   browser   `chromium` and `chromium-driver`, when /usr/bin/chromium or /usr/bin/chromedriver
#             is missing: the integration tests drive the student's page in headless Chromium
#
# Packages come from apt-get: as root directly, otherwise through sudo (which may ask for a
# password); without either it stops and says so. On a machine run by systemd, Debian's
# rabbitmq-server, postgresql and redis-server packages also start and enable their
# system-wide services (RabbitMQ on 5672, PostgreSQL on 5432, Redis on 6379); where a
# policy-rc.d forbids starting services (containers), they are installed but not started, which
# is fine. seatrush never uses those services: scripts/services.sh runs only the packages'
# programs, with configurations of its own. This script leaves them as the packages set them up
# and prints how to stop them (README.md, "What the scripts leave on the machine", says how to
# remove everything).
set -euo pipefail

say() { printf '[prerequisites] %s\n' "$*" >&2; }

die() {
    say "ERROR: $*"
    exit 1
}

# The same tests scripts/services.sh uses to find the programs it runs.
have_rabbitmq() { [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; }
have_redis() { [ -x /usr/bin/redis-server ]; }
# The paths the browser test runs (tests/it/browser.rs).
have_chromium() { [ -x /usr/bin/chromium ]; }
have_chromedriver() { [ -x /usr/bin/chromedriver ]; }
have_postgresql() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
        { command -v initdb >/dev/null && command -v pg_ctl >/dev/null; }
}
# What scripts/services.sh kill-db-member runs.
have_ps() { command -v ps >/dev/null; }

# True if `cc` exists and links a program: gcc alone is not enough, the linker also needs the C
# library's start files and libraries from libc6-dev (a recommendation that
# --no-install-recommends leaves out).
cc_links() {
    command -v cc >/dev/null || return 1
    local dir ok=0
    dir=$(mktemp -d)
    printf 'int main(void) { return 0; }\n' >"$dir/main.c"
    cc "$dir/main.c" -o "$dir/main" >/dev/null 2>&1 || ok=1
    rm -rf "$dir"
    return "$ok"
}

missing=()
reasons=()

# Once, whether asked for by `services` or `redis` or both.
need_redis() {
    if ! have_redis && [[ " ${missing[*]} " != *" redis-server "* ]]; then
        missing+=(redis-server)
        reasons+=("redis-server (the private Redis instance, for the benchmark's Redis design)")
    fi
}
for group in "$@"; do
    case $group in
        compiler)
            if ! cc_links; then
                missing+=(gcc libc6-dev)
                reasons+=("gcc and libc6-dev (a C compiler and the C library's files: Rust links its programs with cc)")
            fi
            ;;
        services)
            if ! have_rabbitmq; then
                missing+=(rabbitmq-server)
                reasons+=("rabbitmq-server (the private RabbitMQ instance)")
            fi
            if ! have_postgresql; then
                missing+=(postgresql)
                reasons+=("postgresql (the private PostgreSQL instance)")
            fi
            need_redis
            if ! have_ps; then
                missing+=(procps)
                reasons+=("procps (ps, with which scripts/services.sh finds a PostgreSQL member's processes to kill)")
            fi
            ;;
        redis) need_redis ;;
        browser)
            if ! have_chromium; then
                missing+=(chromium)
                reasons+=("chromium (the browser the student's page is tested in, headless)")
            fi
            if ! have_chromedriver; then
                missing+=(chromium-driver)
                reasons+=("chromium-driver (chromedriver, through which the tests drive chromium)")
            fi
            ;;
        *) die "unknown group: $group (expected compiler, services, redis or browser)" ;;
    esac
done

[ "${#missing[@]}" -gt 0 ] || exit 0

command -v apt-get >/dev/null ||
    die "missing: ${missing[*]}; there is no apt-get here, install them with this system's package manager"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null ||
        die "missing: ${missing[*]}; installing them needs root or sudo, and neither is available (as root: apt-get install ${missing[*]})"
    sudo=(sudo)
fi

say "installing with apt-get${sudo:+ (through sudo)}:"
for reason in "${reasons[@]}"; do say "  $reason"; done
# apt-get waits up to 10 minutes for the dpkg lock instead of failing at once: just after boot,
# unattended-upgrades (apt-daily-upgrade) often holds it. (apt 2.6 waits so only for the dpkg
# lock, the install's; the update's lock on the package lists still fails at once while apt-daily
# refreshes them.) Through sudo, a refusal (no sudo rights, no password given) fails at the update
# first.
lock_wait=(-o DPkg::Lock::Timeout=600)
"${sudo[@]}" apt-get "${lock_wait[@]}" update >&2 ||
    die "apt-get update failed${sudo:+ (through sudo: this user needs sudo rights; or, as root: apt-get install ${missing[*]})}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get "${lock_wait[@]}" install -y --no-install-recommends "${missing[@]}" >&2 ||
    die "apt-get install ${missing[*]} failed"
say "installed: ${missing[*]}"

if [ -d /run/systemd/system ]; then
    for unit in rabbitmq-server postgresql redis-server; do
        case " ${missing[*]} " in
            *" $unit "*)
                if systemctl is-active --quiet "$unit" 2>/dev/null; then
                    say "note: the $unit package started and enabled its system-wide service; seatrush does not use it"
                    say "      (to stop it and keep it from starting at boot: ${sudo:+sudo }systemctl disable --now $unit)"
                fi
                ;;
        esac
    done
fi
