#!/usr/bin/env bash
# README command 2: set up everything, then run the whole test suite (Rust workspace + pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
set -euo pipefail
echo "== lint" >&2
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
ruff check python tests benches scripts examples
ruff format --check python tests benches scripts examples
echo "== cargo tests" >&2
# The tch crate's tests load libtorch from the torch wheel.
LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo nextest run --workspace --no-fail-fast
echo "== pytest" >&2
# Run from outside the checkout so `import asearcher` tests the installed wheel, not the sources.
cd tests && python -m pytest -q -p no:cacheprovider "$@"
