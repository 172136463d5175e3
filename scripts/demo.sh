#!/usr/bin/env bash
# Fresh Debian/Ubuntu machine with Python >= 3.11: install into ./.venv and run the demo.
# Extra arguments go to `crosscheck demo` (e.g. --out DIR --patients 80).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
make_venv ""
crosscheck demo "$@"
