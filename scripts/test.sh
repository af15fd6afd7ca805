#!/usr/bin/env bash
# Runs every check and test ferrocorn has, on a fresh machine with Rust, Python 3.11,
# pip, maturin and pytest. Installs what else it needs. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r requirements-test.txt

step "Build and install ferrocorn (release build, as users get it)"
python3 -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps .

step "Rust: format, lints, unit tests"
cargo fmt --all --check
cargo clippy --all-targets --locked -- -D warnings
# Unit tests link libpython (pyo3 without extension-module); tell the loader where it is.
PYLIBDIR="$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
LD_LIBRARY_PATH="$PYLIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" cargo test --locked --lib

step "Python: lint"
ruff check python tests benches
ruff format --check python

step "nginx (tests/test_nginx.py puts it in front of ferrocorn)"
if ! command -v nginx >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nginx-light >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null
fi
nginx -v

step "Chromium (tests/test_dashboard.py loads the stats dashboard in it, headless)"
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
chromium --version 2>/dev/null

step "Black-box tests against the real ferrocorn process"
python3 -m pytest tests -p no:cacheprovider "$@"
