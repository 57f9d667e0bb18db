#!/usr/bin/env bash
# Development build without installing: compiles the extension and copies it next to the Python
# sources, so `PYTHONPATH=python` (or running from a worktree) imports this checkout.
# Needs the environment from `. scripts/setup.sh` (venv with torch, LIBTORCH_USE_PYTORCH=1).
# Usage: bash scripts/dev-build.sh [--release]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LIBTORCH_USE_PYTORCH=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/asearcher/target}"
profile=debug
args=()
if [ "${1:-}" = "--release" ]; then profile=release; args+=(--release); fi
cd "$ROOT"
# Worktrees may share one target directory, whose uplifted lib_core.so is the last one built:
# build and copy under one lock so each checkout gets its own.
mkdir -p "$CARGO_TARGET_DIR"
flock "$CARGO_TARGET_DIR/.dev-build.lock" bash -c '
  cargo build -p asearcher-py --features pyo3/extension-module "${@:3}" &&
  cp "$CARGO_TARGET_DIR/$1/lib_core.so" "$2.tmp" && mv -f "$2.tmp" "$2"' _ "$profile" "$ROOT/python/asearcher/_core.abi3.so" "${args[@]}"
echo "built $ROOT/python/asearcher/_core.abi3.so ($profile); use PYTHONPATH=$ROOT/python" >&2
