#!/usr/bin/env bash
# README command 1: set up everything, then run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
asearcher demo "$@"
