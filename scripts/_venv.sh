# Sourced by scripts/demo.sh and scripts/test.sh: makes ./.venv and installs the project.
# torch goes in first, pinned to the CPU build on disk, so no dependency pulls a CUDA build.
set -euo pipefail

find_python() {
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "imaging-crosscheck needs Python >= 3.11 (none found on PATH)" >&2
  return 1
}

install_system_packages() {
  # Debian/Ubuntu packages the given extra needs; nothing is installed when all are present.
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
  fi
}

make_venv() {
  local extra="$1"
  local python
  python="$(find_python)"
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  if [ -n "$extra" ]; then
    python -m pip install -q -e ".[$extra]"
  else
    python -m pip install -q -e .
  fi
}
