#!/usr/bin/env bash
# System packages the test suite and benchmarks use beyond the Python venv:
#   chromium + chromium-driver  the staff web page test (headless, driven by Playwright via executable_path)
#   wrk                         the serving benchmark's load generator (a Python fallback exists)
# Idempotent: installs only what is missing. Never fails the build: without apt (or without root) it says so
# and the browser test skips with its reason.
set -u

wanted=(chromium chromium-driver wrk)
missing=()
for pkg in "${wanted[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-system-deps: ${wanted[*]} already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: apt-get not available; missing ${missing[*]} (the browser test will skip)" >&2
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "install-system-deps: not root and no sudo; missing ${missing[*]} (the browser test will skip)" >&2
        exit 0
    fi
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get update -q >/dev/null \
    || ! $sudo apt-get install -y -q "${missing[@]}" >/dev/null; then
    echo "install-system-deps: apt-get failed for ${missing[*]} (the browser test will skip)" >&2
fi
exit 0
