#!/usr/bin/env bash
# The browser tests drive a system Chromium (Playwright never downloads a browser here).
# Installs Debian's chromium when it is missing and we may (root or sudo); otherwise says how.
set -euo pipefail
if [ -n "${LORABOARD_CHROMIUM:-}" ] && [ -x "$LORABOARD_CHROMIUM" ]; then exit 0; fi
for path in /usr/bin/chromium /usr/bin/chromium-browser; do [ -x "$path" ] && exit 0; done
if command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
    echo "loraboard: installing Debian's chromium for the browser tests …"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    exit 0
  fi
fi
echo "The browser tests need Chromium: install it (Debian: apt-get install chromium) or set" >&2
echo "LORABOARD_CHROMIUM to a Chromium/Chrome executable." >&2
exit 1
