"""The reliability suite (issue 11): every way a careless or hostile user broke the CLI.

Each case ends in one of three outcomes, asserted here: one `error: ...` line and exit
1 with nothing run; detected and recomputed (the log says so) with outputs equal to an
undisturbed run; or refused. The io-level primitives are in tests/test_reliability_io.py.
Runs are configs/tiny.py-sized on the tests' tiny random models.
"""
import contextlib
import io as _io
import os
import pathlib
import sys

import pytest
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lis_jax import main  # noqa: E402

TINY = str(ROOT / "configs" / "tiny.py")


def cli(monkeypatch, *args):
  """Runs `python -m lis_jax.main ARGS` in this process; returns (exit code, stderr)."""
  argv = ["lis_jax.main", *args]
  monkeypatch.setattr(sys, "argv", argv)   # ml_collections reads overrides from sys.argv
  monkeypatch.delitem(sys.modules, "config_config", raising=False)   # its cached config module
  flags.FLAGS.unparse_flags()
  err = _io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      main.main(main.parse_flags(argv))
      rc = 0
    except SystemExit as e:
      rc = e.code
  return rc, err.getvalue()


def assert_one_line(rc, err, pattern):
  import re
  assert rc == 1, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert re.search(pattern, lines[0]), lines[0]


# ----------------------------------------------------------------------------- config files


def _write(path, text):
  path.write_text(text)
  return str(path)


CONFIG_FILE_CASES = {
    "missing_file": (lambda d: str(d / "nope.py"), [], r"config file not found: .*nope\.py"),
    "syntax_error": (lambda d: _write(d / "c.py", "def get_config(:\n"), [],
                     r"config file .*c\.py line 1: invalid syntax"),
    "no_get_config": (lambda d: _write(d / "c.py", "x = 1\n"), [], r"has no attribute 'get_config'"),
    "get_config_raises": (lambda d: _write(d / "c.py", "def get_config():\n  return 1 / 0\n"), [],
                          r"ZeroDivisionError"),
    "a_directory": (lambda d: str(d), [], r"config file not found"),
    "unknown_section_field": (lambda d: TINY, ["--config.sweep.nope=3"],
                              r"unknown config field 'nope' in --config\.sweep\.nope=3"),
    "unknown_top_field": (lambda d: TINY, ["--config.nope=3"], r"unknown config field 'nope'"),
    "unparsable_value": (lambda d: TINY, ["--config.sweep.n_steps=abc"], r"n_steps=abc"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILE_CASES))
def test_config_file_errors_are_one_line(tmp_path, monkeypatch, case):
  make, extra, pattern = CONFIG_FILE_CASES[case]
  work = tmp_path / "work"
  rc, err = cli(monkeypatch, f"--config={make(tmp_path)}", f"--workdir={work}", *extra)
  assert_one_line(rc, err, pattern)
  assert not work.exists()   # nothing ran
