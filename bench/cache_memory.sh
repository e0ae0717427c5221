#!/usr/bin/env bash
# pgward's resident memory while one caller sends many distinct 1 MB statements (half denied,
# half allowed) and distinct 200 KB allowed ones that fill the decision cache
# ([policy] cache_bytes = 64 MiB). Prints RSS every 250 statements; fails if the peak
# exceeds the start + the cache budget + 64 MiB. Numbers: docs/performance.md.
#
#   bench/cache_memory.sh          # 2000 statements (a few minutes)
#   bench/cache_memory.sh 10000    # the issue's 10,000
set -euo pipefail
cd "$(dirname "$0")/.."
export PGWARD_BENCH_STATEMENTS="${1:-2000}"
# The proto-tests' binary, built as scripts/test builds it.
cargo build -q -p pgward --features dev-tools
exec cargo test -q -p pgward-proto-tests --test cache_memory -- --ignored --nocapture
