"""Headless Chromium for browser tests (Debian's chromium + chromium-driver, installed by
scripts/test.sh). Use the `browser` fixture: a Selenium WebDriver at 1280 x 900 that
records console messages (`console_errors(driver)`).

A test that needs the browser fails (never skips) when Chromium cannot start.
"""
from __future__ import annotations

import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 900)


def start(width: int = WINDOW[0], height: int = WINDOW[1]):
  """A headless Chromium WebDriver; the caller quits it."""
  from selenium import webdriver
  from selenium.webdriver.chrome.options import Options
  from selenium.webdriver.chrome.service import Service

  binary = shutil.which("chromium") or CHROMIUM
  driver_path = shutil.which("chromedriver") or CHROMEDRIVER
  opts = Options()
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--allow-file-access-from-files"):
    opts.add_argument(arg)
  opts.binary_location = binary
  opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  # An explicit driver path: Selenium never tries to download one.
  return webdriver.Chrome(service=Service(driver_path), options=opts)


def console_errors(driver) -> list[str]:
  """SEVERE console messages logged since the last call (uncaught errors, failed loads)."""
  return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture
def browser():
  driver = start()
  try:
    yield driver
  finally:
    driver.quit()
