#!/usr/bin/env bash
# The README's test command: set up (the pinned versions of constraints.txt, CPU torch for the
# converters, headless Chromium for the browser tests) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  # Browser tests (tests/browser.py) drive Debian's Chromium through its WebDriver.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# constraints.txt: the versions the suite passed with (README, "Reproducibility").
python -m pip install -q -c constraints.txt -e ".[test]"
# lpips without its torchvision requirement (see setup.py).
python -m pip install -q --no-deps lpips==0.1.4
# Two worker processes (pytest-xdist), whole files per worker so a file's shared fixtures are
# built once; tests/conftest.py gives the session a fresh JAX compilation cache (README, "Tests").
python -m pytest -q -n 2 --dist loadfile tests "$@"
