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
cargo build -p asearcher-py --features pyo3/extension-module "${args[@]}"
cp "$CARGO_TARGET_DIR/$profile/lib_core.so" "$ROOT/python/asearcher/_core.abi3.so"
echo "built $ROOT/python/asearcher/_core.abi3.so ($profile); use PYTHONPATH=$ROOT/python" >&2
