#!/usr/bin/env bash
# Sets up everything asearcher needs on a fresh machine, reusing what is already there:
# a virtual environment (shared between clones, so torch's ~4.6 GB is installed once), torch 2.11,
# the Python dev tools, and the asearcher wheel built from this checkout and installed into it.
# Source it (`. scripts/setup.sh`): it activates the environment and exports the build variables.
#
# Settings (environment): ASEARCHER_VENV (default ~/.cache/asearcher/venv),
# CARGO_TARGET_DIR (default ~/.cache/asearcher/target, shared so rebuilds reuse dependencies),
# ASEARCHER_SKIP_WHEEL=1 to skip building and installing the wheel.
set -euo pipefail

ASEARCHER_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
ASEARCHER_CACHE="${ASEARCHER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/asearcher}"
ASEARCHER_VENV="${ASEARCHER_VENV:-$ASEARCHER_CACHE/venv}"
TORCH_VERSION="2.11.0"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ASEARCHER_CACHE/target}"
export LIBTORCH_USE_PYTORCH=1

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

ensure_venv() {
  if [ ! -x "$ASEARCHER_VENV/bin/python" ]; then
    log "creating virtual environment $ASEARCHER_VENV"
    mkdir -p "$(dirname "$ASEARCHER_VENV")"
    python3 -m venv "$ASEARCHER_VENV"
    "$ASEARCHER_VENV/bin/python" -m pip install -q --upgrade pip
  fi
  # shellcheck disable=SC1091
  . "$ASEARCHER_VENV/bin/activate"
}

ensure_torch() {
  if python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    return
  fi
  log "installing torch==$TORCH_VERSION (large download, once)"
  python -m pip install -q "torch==$TORCH_VERSION"
}

ensure_python_deps() {
  local stamp="$ASEARCHER_VENV/.asearcher-deps" want
  want="$(cat "$ASEARCHER_ROOT/scripts/requirements-dev.txt" "$ASEARCHER_ROOT/scripts/requirements-nodeps.txt")"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  log "installing Python tools (scripts/requirements-dev.txt, scripts/requirements-nodeps.txt)"
  python -m pip install -q -r "$ASEARCHER_ROOT/scripts/requirements-dev.txt"
  python -m pip install -q --no-deps -r "$ASEARCHER_ROOT/scripts/requirements-nodeps.txt"
  printf '%s' "$want" > "$stamp"
}

ensure_rust() {
  if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || { log "cargo is required (install Rust with rustup)"; return 1; }
  command -v cargo-nextest >/dev/null || cargo nextest --version >/dev/null 2>&1 || {
    log "installing cargo-nextest (once)"
    cargo install --locked cargo-nextest
  }
}

build_wheel() {
  log "building the asearcher wheel (release)"
  rm -rf "$ASEARCHER_ROOT/dist"
  (cd "$ASEARCHER_ROOT" && maturin build --release --quiet -o dist >&2) || { log "wheel build failed"; return 1; }
  python -m pip install -q --force-reinstall --no-deps "$ASEARCHER_ROOT"/dist/asearcher-*.whl || return 1
}

ensure_venv
ensure_rust || return 1 2>/dev/null || exit 1
ensure_torch
ensure_python_deps
TORCH_LIB="$(python -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export TORCH_LIB
if [ "${ASEARCHER_SKIP_WHEEL:-0}" != "1" ]; then
  build_wheel || return 1 2>/dev/null || exit 1
fi
set +euo pipefail
