#!/usr/bin/env bash
# Rebuilds the extension in place for an editable install (`pip install -e .`), so
# Python and Rust edits take effect without reinstalling. Usage: bash scripts/dev-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --profile dev-release --features extension-module --lib
suffix="$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
# Copy then rename: overwriting the mapped file in place would crash running servers.
cp target/dev-release/libferrocorn.so "python/ferrocorn/.tmp_ferrocorn${suffix}"
mv -f "python/ferrocorn/.tmp_ferrocorn${suffix}" "python/ferrocorn/_ferrocorn${suffix}"
