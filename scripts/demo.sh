#!/usr/bin/env bash
# The demos on the embedded default (SQLite, local models_store/, filesystem broker): no servers.
# First a classifier forgets classes and samples, then an image-to-image model forgets classes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/nepenthe demo
exec .venv/bin/nepenthe demo-i2i
