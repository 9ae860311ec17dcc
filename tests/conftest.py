"""Shared test settings: where the reference fixtures live."""
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# ../shared/fixtures beside the project root (CI clones with shared/ beside it).
FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  assert FIXTURES.is_dir(), f"reference fixtures not found at {FIXTURES}"
  return FIXTURES
