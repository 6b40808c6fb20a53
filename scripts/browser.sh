#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests and screenshots (driven by Playwright for
# Python against this system binary: nothing is downloaded at test time). Prints its path.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get install -y --no-install-recommends chromium >&2 \
    || { $SUDO apt-get update >&2 && $SUDO apt-get install -y --no-install-recommends chromium >&2; }
fi
echo /usr/bin/chromium
