#!/usr/bin/env bash
# The test command: install what the tests need into .venv, then run the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")"
source ./scripts/setup_env.sh
python -m pytest "$@"
