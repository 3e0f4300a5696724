#!/usr/bin/env bash
# Install what the tests need into .venv and run the whole suite on the CPU.
# usage: bash tests/run.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh requirements-dev.txt
exec .venv/bin/python -m pytest -q "$@" tests
