#!/usr/bin/env bash
# The README's test command: installs, on first use, what the tests need from outside Cargo,
# then runs `cargo test` (extra arguments are passed on, e.g. `./test.sh --test readme`).
#
# Each outside need has one `ensure_*` function that returns at once when it is already
# met, so only the first run on a fresh machine installs anything. Today:
#   - Debian's `prometheus` package: `prometheus` and `promtool` for the scrape, rule and
#     alert tests.
# Later needs go in their own function and keep their files under $DUJIANG_CACHE
# (default ~/.cache/dujiang), e.g. a Python venv at $DUJIANG_CACHE/venv for the client
# tests and a llama.cpp build at $DUJIANG_CACHE/llama.cpp.
#
# Runs without prompts as root; as another user it uses `sudo -n` for the installs.
#   --setup-only             install what is missing, do not run the tests
#   DUJIANG_SETUP_DRY_RUN=1  print the installing commands instead of running them
set -euo pipefail
cd "$(dirname "$0")"

DUJIANG_CACHE="${DUJIANG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dujiang}"
export DUJIANG_CACHE
dry_run="${DUJIANG_SETUP_DRY_RUN:-}"

say() { echo "test.sh: $*" >&2; }

# Runs a command that changes the machine: as root, through `sudo -n`, or (dry run) not at all.
privileged() {
  if [ -n "$dry_run" ]; then
    echo "would run: $*"
  elif [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    say "needs root (or password-less sudo) to run: $*"
    exit 1
  fi
}

apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1 && [ -z "$dry_run" ]; then
    say "no apt-get on this machine: install $* (Debian package names) by hand"
    exit 1
  fi
  if [ -z "$apt_updated" ]; then
    privileged apt-get -qq -o DPkg::Lock::Timeout=300 update
    apt_updated=1
  fi
  # No prompts: no debconf questions, keep existing config files, wait for a held dpkg lock
  # (another first run installing at the same moment) instead of failing.
  privileged env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "$@"
}

ensure_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return
  fi
  say "installing Debian's prometheus package (first use)"
  apt_install prometheus
  # The package starts a system service on :9090. The tests run their own servers on
  # their own ports, so stop it through the service manager (never by process name, which
  # would hit someone else's Prometheus).
  privileged sh -c 'systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true'
}

ensure_prometheus

if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi
exec cargo test "$@"
