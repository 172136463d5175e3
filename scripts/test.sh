#!/usr/bin/env bash
# Fresh Debian/Ubuntu machine with Python >= 3.11: install into ./.venv and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
make_venv "test"
python -m pytest "$@"
