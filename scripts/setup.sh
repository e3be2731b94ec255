#!/usr/bin/env bash
# Create .venv and install loraboard with the MLX backend right for this machine.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh dev      plus the test tools
# LORABOARD_BACKEND=cpu|cuda picks the Linux backend (default: cpu; the two never go together,
# as both wheels install the same libmlx.so). macOS always uses Metal through plain `mlx`.
set -euo pipefail
cd "$(dirname "$0")/.."

want_dev=${1:-}
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      python=$candidate; break
    fi
  done
fi
[ -n "$python" ] || { echo "loraboard needs Python 3.11 or newer on PATH" >&2; exit 1; }

extras=""
case "$(uname -s)" in
  Linux)
    backend=${LORABOARD_BACKEND:-cpu}
    case "$backend" in
      cpu|cuda) extras=$backend ;;
      *) echo "LORABOARD_BACKEND must be cpu or cuda, got '$backend'" >&2; exit 1 ;;
    esac ;;
  Darwin) extras="" ;;
esac
if [ "$want_dev" = "dev" ]; then extras=${extras:+$extras,}dev; fi
spec="."; [ -n "$extras" ] && spec=".[$extras]"

stamp=".venv/.installed-$(echo "$spec" | tr -c 'a-z0-9' '_')"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
echo "loraboard: installing $spec into .venv …"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
if [ "${extras#*cuda}" != "$extras" ]; then
  .venv/bin/python -m pip uninstall --quiet --yes mlx-cpu >/dev/null 2>&1 || true
elif [ "$(uname -s)" = Linux ]; then
  .venv/bin/python -m pip uninstall --quiet --yes mlx-cuda-13 mlx-cuda-12 mlx-cuda >/dev/null 2>&1 || true
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
rm -f .venv/.installed-*
touch "$stamp"
