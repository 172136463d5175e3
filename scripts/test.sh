#!/usr/bin/env bash
# Fresh Debian/Ubuntu machine with Python >= 3.11: install into ./.venv and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
# The integration tests start a real PACS: Orthanc with its DICOMweb and GDCM plugins, and a private
# PostgreSQL cluster for the store; the review page tests drive Debian's chromium with Playwright (no
# browser download).
install_system_packages orthanc orthanc-dicomweb orthanc-gdcm chromium postgresql
make_venv "test"
python -m pytest "$@"
