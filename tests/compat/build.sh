#!/usr/bin/env bash
# Rebuilds the frozen compatibility fixture(s). Only run this on purpose
# (e.g. to add a fixture for a new WIT release); the committed .wasm files
# are what the test suite runs.
set -euo pipefail
cd "$(dirname "$0")"
for dir in v0_1_0; do
    (cd "$dir" && cargo build --quiet --release --target wasm32-wasip2 --target-dir ../../../target/compat)
done
cp ../../target/compat/wasm32-wasip2/release/kitchen_sink_v0_1_0.wasm kitchen_sink_v0_1_0.wasm
ls -l ./*.wasm
