#!/usr/bin/env bash
# Set up (or update) .venv with gaussian-flametalk and its test extras. Idempotent; needs only python3.
#   bash setup.sh            # then: .venv/bin/gft ...   or   .venv/bin/python -m pytest -q
# torch is pinned to 2.13.0 by constraints.txt: PyPI serves it as a CUDA build on GPU machines; here a CPU wheel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
export PIP_CONSTRAINT="$PWD/constraints.txt"
echo "setup: installing gaussian-flametalk[test] (torch pinned by constraints.txt)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
