#!/usr/bin/env bash
# The README's second command: set-up, then the whole test suite (unit + integration tests
# that run the real binary). Uses ../shared/data beside the checkout. Extra arguments go to
# cargo test (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
cargo test --locked --all-targets "$@"
