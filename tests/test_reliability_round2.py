"""Round 2 of the hostile-input cases (issue 22): each case of the issue is one test or one
parametrized family here, named by the issue's kind (injection, silent, memory, hang,
traceback). A case passes when the input gives one `error: ...` line and a non-zero exit
(or, for a silent case, the right result), in bounded time and memory."""
import html as _html
import io as _io
import json
import os

import numpy as np
import pytest
from PIL import Image

from lis_jax import page as lis_page
from lis_jax.label import page as label_page
from tests.browser import browser, console_errors  # noqa: F401  (fixture)

# Names a careless or hostile user can put in part_names.json (the three, and the
# other ways out of a <script> block or an attribute).
HOSTILE = ('<img src=x onerror=document.title="PWNED6">', "<!--<script>", "<!--", "<script>",
           "</script><script>document.title='PWNED7'</script>", "\u2028x\u2029", "a & b",
           "\"'><svg onload=document.title='PWNED8'>")

# ----------------------------------------------------------------------------- injection


def _png(side=8, seed=0):
  buf = _io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


@pytest.mark.parametrize("parts", [("background",) + HOSTILE, ("background", "<!--<script>"),
                                   ("background", "<!--", "<script>")],
                         ids=["all", "comment_script", "comment_then_script"])
def test_injection_labeller_page_shows_every_part_and_image(browser, tmp_path, parts):
  names = ["s0000_c0001", "<img src=x onerror=document.title='PWNED9'>", "s0001_c0001"]
  items = [label_page.item(n, _png(seed=k), 8) for k, n in enumerate(names)]
  path = tmp_path / "label.html"
  label_page.write(str(path), items, parts)
  assert "<!--" not in path.read_text().split('id="lis-data"')[1].split("</script>")[0]
  browser.get(path.as_uri())
  assert "PWNED" not in browser.title
  shown = browser.execute_script(
      "return [...document.querySelectorAll('#parts .nm')].map(e => e.textContent)")
  assert shown == [f"{k} {p}" for k, p in enumerate(parts)]
  listed = browser.execute_script(
      "return [...document.querySelectorAll('#images .nm')].map(e => e.textContent)")
  assert listed == names
  assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], svg').length") == 0
  assert browser.execute_script("return window.lisLabeller.data.parts") == list(parts)
  assert not console_errors(browser)


def _report_body(parts):
  """A report section built the way the stages build theirs: a table of pre-escaped class
  names and raw part names (boundary's 'all pairs'), a default table, a figure caption."""
  rows = [[_html.escape("class <b>&"), _html.escape("jack-o'-lantern"), f"{p} size (+1.00*)"] for p in parts]
  pairs = lis_page.table(["origin", "target", "top concepts"], rows, escape_cells=False)
  plain = lis_page.table(["part", "IoU"], [[p, "0.5"] for p in parts])
  return (f'<section id="boundary"><h2>The decision boundary</h2>'
          f"<details open><summary>all pairs</summary>{pairs}</details>{plain}</section>")


def test_injection_report_tables_escape_part_names(browser, tmp_path):
  parts = list(HOSTILE)
  path = tmp_path / "index.html"
  path.write_text(lis_page.document("report <script>", str(tmp_path / "<img src=x>"), _report_body(parts)))
  browser.get(path.as_uri())
  assert "PWNED" not in browser.title
  assert browser.execute_script("return document.querySelectorAll('img, svg, script').length") == 0
  cells = browser.execute_script(
      "return [...document.querySelectorAll('table')[0].querySelectorAll('td')].map(e => e.textContent)")
  assert cells[0::3] == ["class <b>&"] * len(parts)  # escaped once, shown as written
  assert cells[1::3] == ["jack-o'-lantern"] * len(parts)
  assert cells[2::3] == [f"{p} size (+1.00*)" for p in parts]
  cells = browser.execute_script(
      "return [...document.querySelectorAll('table')[1].querySelectorAll('td')].map(e => e.textContent)")
  assert cells[0::2] == parts


def test_script_json_round_trips_and_hides_markup():
  obj = {"parts": list(HOSTILE), "n": [1, 2.5]}
  s = lis_page.script_json(obj)
  assert json.loads(s) == obj
  assert not any(ch in s for ch in "<>&\u2028\u2029")
