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
echo "setup: installing gaussian-flametalk[test,distributed,viewer] (torch pinned by constraints.txt)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,distributed,viewer]"
# espeak-ng speaks the built-in demo subject (gft demo). Installed with apt-get where apt is there and we are root or
# have passwordless sudo; anything else only prints how to get it: the setup never fails over it.
if command -v espeak-ng >/dev/null 2>&1; then
    echo "setup: espeak-ng found (speech for gft demo)"
elif command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        SUDO="no"
    fi
    if [ "$SUDO" != "no" ] && { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null 2>&1 \
             && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null 2>&1; }; }; then
        echo "setup: installed espeak-ng with apt-get (speech for gft demo)"
    else
        echo "setup: could not install espeak-ng (gft demo needs it; the rest works without): sudo apt-get install espeak-ng"
    fi
else
    echo "setup: espeak-ng not found (gft demo needs it; the rest works without): install it with your package manager"
fi
# Chromium runs the browser test of gft view (tests/test_view.py skips without it): apt-get where apt is there and we
# are root or have passwordless sudo, as for espeak-ng; the setup never fails over it.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || command -v google-chrome >/dev/null 2>&1; then
    echo "setup: chromium found (browser test of gft view)"
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || sudo -n true >/dev/null 2>&1; }; then
    SUDO=$([ "$(id -u)" -eq 0 ] || echo "sudo -n")
    if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null 2>&1 \
             && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; then
        echo "setup: installed chromium with apt-get (browser test of gft view)"
    else
        echo "setup: could not install chromium (only the browser test of gft view needs it): sudo apt-get install chromium"
    fi
else
    echo "setup: chromium not found (only the browser test of gft view needs it): install it with your package manager"
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
