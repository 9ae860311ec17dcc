#!/usr/bin/env bash
# The README's test command: set up (CPU torch pinned for the converters) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test]"
python -m pytest -q tests "$@"
