#!/usr/bin/env bash
# The README's test command: set up (CPU torch pinned for the converters, headless Chromium
# for the browser tests) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  # Browser tests (tests/browser.py) drive Debian's Chromium through its WebDriver.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python -m pip install -q -e ".[test]"
# lpips without its torchvision requirement (see setup.py); its own needs are in the test extra.
python -m pip install -q --no-deps lpips==0.1.4
python -m pytest -q tests "$@"
