#!/usr/bin/env bash
# The README's first command: install what is needed, build, and run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
exec ./target/release/lazarus demo "$@"
