#!/usr/bin/env bash
# Set up everything and run the checks and the whole test suite against real services.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
export NEPENTHE_TEST_FASHION_ROOT="$(bash scripts/fashion_mnist.sh var/data)"
export NEPENTHE_TEST_CHROMIUM="$(bash scripts/browser.sh)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# One test process per core: e2e tests spend much of their time waiting on API and worker
# processes, and every test has its own database, queues, ports and store. One torch thread per
# process: two processes of two threads each on two cores made small convolutions 30x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -n "${NEPENTHE_TEST_PROCESSES:-auto}" "$@"
