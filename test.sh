#!/usr/bin/env bash
# The README's test command: installs, on first use, what the tests need from outside Cargo,
# then runs `cargo test` (extra arguments are passed on, e.g. `./test.sh --test readme`).
#
# Each outside need has one `ensure_*` function that returns at once when it is already
# met, so only the first run on a fresh machine installs anything. Today:
#   - Debian's `prometheus` package: `prometheus` and `promtool` for the scrape, rule and
#     alert tests.
#   - a Python virtualenv at $DUJIANG_CACHE/venv (default ~/.cache/dujiang/venv) with the
#     official `openai` SDK from PyPI, pinned below, for tests/openai_sdk.rs; its python is
#     exported as DUJIANG_OPENAI_PYTHON. (Debian's python3 and python3-venv are installed
#     first if there is no python3 that can make a venv.)
#   - a second virtualenv at $DUJIANG_CACHE/llama-venv with `llama-cpp-python[server]`
#     (which compiles llama.cpp from source: minutes on two cores, once per cache), `gguf`
#     and numpy, pinned below, for the tests that run a real llama.cpp OpenAI server
#     (tests/llamacpp_backend.rs); its python is exported as DUJIANG_LLAMA_PYTHON. A C++
#     compiler (Debian's g++) is installed first if there is none.
#   - a third virtualenv at $DUJIANG_CACHE/aiperf-venv with NVIDIA's AIPerf load tester
#     (PyPI `aiperf`, pinned below, ~1.2 GB with its dependencies, no torch; about four
#     minutes to install on two cores), for tests/aiperf.rs; its python is exported as
#     DUJIANG_AIPERF_PYTHON, its `aiperf` command sits beside it.
# Later needs go in their own function and keep their files under $DUJIANG_CACHE.
#
# Runs without prompts as root; as another user it uses `sudo -n` for the installs.
#   --setup-only             install what is missing, do not run the tests
#   --setup NAME             only ensure NAME (prometheus, openai-venv, llama-venv, aiperf-venv),
#                            do not run the tests (what a test run by plain `cargo test` calls
#                            itself)
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

# The openai SDK version the client tests run (PyPI's `openai`); change it here only.
OPENAI_SDK_VERSION=3.51.0

# ensure_venv NAME CHECK WHAT NEEDS INSTALL...: sets VENV_PY to the python of
# $DUJIANG_CACHE/NAME, first making the venv if its python does not pass the Python CHECK:
# Debian's python3-venv where missing and the shell function NEEDS (`:` for nothing), then,
# under a lock (test binaries that find no venv call this concurrently), a fresh venv and
# the command INSTALL... in it. WHAT names the install in messages.
ensure_venv() {
  local name=$1 check=$2 what=$3 needs=$4
  shift 4
  local venv="$DUJIANG_CACHE/$name"
  VENV_PY="$venv/bin/python"
  if [ -x "$VENV_PY" ] && "$VENV_PY" -c "$check" 2>/dev/null; then
    return
  fi
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    say "installing Debian's python3 and python3-venv (first use)"
    apt_install python3 python3-venv
  fi
  "$needs"
  say "creating $venv with $what (first use)"
  if [ -n "$dry_run" ]; then
    echo "would run: python3 -m venv $venv && $*"
    return
  fi
  mkdir -p "$DUJIANG_CACHE"
  (
    flock 9
    if [ -x "$VENV_PY" ] && "$VENV_PY" -c "$check" 2>/dev/null; then
      exit 0
    fi
    # A half-made venv (an install cut short) fails the check above: start again.
    rm -rf "$venv"
    python3 -m venv "$venv"
    local started=$SECONDS
    "$@"
    "$VENV_PY" -c "$check"
    say "$name ready in $((SECONDS - started)) s"
  ) 9>"$DUJIANG_CACHE/$name.lock"
}

# The openai SDK version the client tests run (PyPI's `openai`); change it here only.
OPENAI_SDK_VERSION=3.51.0

ensure_openai_venv() {
  ensure_venv venv "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_SDK_VERSION')" \
    "openai==$OPENAI_SDK_VERSION from PyPI" : \
    "$DUJIANG_CACHE/venv/bin/python" -m pip install "openai==$OPENAI_SDK_VERSION" \
    --quiet --disable-pip-version-check
  export DUJIANG_OPENAI_PYTHON="$VENV_PY"
}

# What the llama.cpp tests run (PyPI names); change them here only. llama-cpp-python is an
# sdist that builds llama.cpp with CMake (scikit-build-core fetches cmake and ninja from PyPI
# when the machine has none).
LLAMA_CPP_PYTHON_VERSION=0.3.36
GGUF_VERSION=0.19.0
# A portable CPU-only build, as small as the server allows: no -march=native (the cache may
# move to another CPU), no GPU or BLAS backends, no OpenMP, none of llama.cpp's own tools,
# examples, tests or its HTTP server (the Python package serves HTTP itself), and not the
# multimodal library (LLAVA_BUILD: the package loads it only for image chat formats).
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
-DGGML_BLAS=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF"

# llama-cpp-python compiles llama.cpp.
ensure_cxx() {
  if ! command -v c++ >/dev/null 2>&1; then
    say "installing Debian's g++ to compile llama.cpp (first use)"
    apt_install g++
  fi
}

ensure_llama_venv() {
  # --no-cache-dir: a wheel built with other flags elsewhere on this machine is not reused.
  ensure_venv llama-venv "import sys, importlib.metadata as m, llama_cpp, llama_cpp.server, gguf, numpy; \
sys.exit(m.version('llama_cpp_python') != '$LLAMA_CPP_PYTHON_VERSION' or m.version('gguf') != '$GGUF_VERSION')" \
    "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION (compiles llama.cpp: minutes)" \
    ensure_cxx \
    env CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
    "$DUJIANG_CACHE/llama-venv/bin/python" -m pip install \
    "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" "gguf==$GGUF_VERSION" numpy \
    --quiet --disable-pip-version-check --no-cache-dir
  export DUJIANG_LLAMA_PYTHON="$VENV_PY"
}

# What the AIPerf test runs (PyPI's `aiperf`, NVIDIA's load tester, genai-perf's successor);
# change it here only. Its own dependencies (transformers, tokenizers, ...) come with it.
AIPERF_VERSION=0.13.0

ensure_aiperf_venv() {
  # Metadata only for transformers: importing it prints a warning that torch is missing
  # (AIPerf needs its tokenizers, not its models); the `aiperf` script must be there too.
  ensure_venv aiperf-venv "import os, sys, importlib.metadata as m, tokenizers; \
m.version('transformers'); \
sys.exit(m.version('aiperf') != '$AIPERF_VERSION' or not os.access(os.path.join(sys.prefix, 'bin', 'aiperf'), os.X_OK))" \
    "aiperf==$AIPERF_VERSION from PyPI" : \
    "$DUJIANG_CACHE/aiperf-venv/bin/python" -m pip install "aiperf==$AIPERF_VERSION" \
    --quiet --disable-pip-version-check
  export DUJIANG_AIPERF_PYTHON="$VENV_PY"
}

case "${1:-}" in
  --setup)
    case "${2:-}" in
      prometheus) ensure_prometheus ;;
      # Prints the venv's python, for the test that called it.
      openai-venv) ensure_openai_venv && echo "${DUJIANG_OPENAI_PYTHON:-}" ;;
      llama-venv) ensure_llama_venv && echo "${DUJIANG_LLAMA_PYTHON:-}" ;;
      aiperf-venv) ensure_aiperf_venv && echo "${DUJIANG_AIPERF_PYTHON:-}" ;;
      *) say "--setup takes prometheus, openai-venv, llama-venv or aiperf-venv, not '${2:-}'"; exit 2 ;;
    esac
    exit 0
    ;;
esac

ensure_prometheus
ensure_openai_venv
ensure_llama_venv
ensure_aiperf_venv

if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi
exec cargo test "$@"
