#!/usr/bin/env bash
# Every benchmark, one after the other (never at the same time: they would slow each other down).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
for bench in embed detect search milvus index train dlib serve memory video; do
  echo "## $bench"
  .venv/bin/python "benchmarks/bench_$bench.py"
  echo
done
