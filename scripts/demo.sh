#!/usr/bin/env bash
# The README's first command: set-up, release build, synthetic world, proposals and their
# pseudo-queries, recall and caption accuracy against the planted events.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
exec target/release/momentminer demo --out "${1:-out/demo}"
