#!/usr/bin/env bash
# The demo on the embedded default (SQLite, local models_store/, filesystem broker): no servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nepenthe demo
