#!/usr/bin/env bash
# The browser tests drive a system Chromium (Playwright never downloads a browser here).
# Installs Debian's chromium when it is missing and we may (root or sudo); otherwise says how.
# Silent when a browser is there; apt-get's output is shown only if the install fails.
set -euo pipefail
if [ -n "${LORABOARD_CHROMIUM:-}" ] && [ -x "$LORABOARD_CHROMIUM" ]; then exit 0; fi
for path in /usr/bin/chromium /usr/bin/chromium-browser; do [ -x "$path" ] && exit 0; done
if command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
  if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
    echo "loraboard: installing Debian's chromium for the browser tests …"
    log=$(mktemp)
    if $sudo apt-get update -qq >"$log" 2>&1 &&
       $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >>"$log" 2>&1; then
      rm -f "$log"; exit 0
    fi
    cat "$log" >&2; rm -f "$log"  # apt's own output, shown only when it failed
    echo "loraboard: could not install chromium (above: apt-get's output)" >&2
    exit 1
  fi
fi
echo "The browser tests need Chromium: install it (Debian: apt-get install chromium) or set" >&2
echo "LORABOARD_CHROMIUM to a Chromium/Chrome executable." >&2
exit 1
