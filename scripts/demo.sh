#!/usr/bin/env bash
# The demos on the embedded default (SQLite, local models_store/, filesystem broker): no servers.
# First a classifier forgets classes and samples, then an image-to-image model forgets classes.
# With --keep, the image-to-image demo runs first and the classifier demo's API and worker stay
# up afterwards, so its requests can be looked at in the web console (Ctrl-C stops them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--keep" ]; then
  .venv/bin/nepenthe demo-i2i
  exec .venv/bin/nepenthe demo --keep
fi
.venv/bin/nepenthe demo
exec .venv/bin/nepenthe demo-i2i
