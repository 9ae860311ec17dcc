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


# ----------------------------------------------------------------------------- label import

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from lis_jax import errors, io  # noqa: E402
from lis_jax.label import importer, layout, masks  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

PARTS = ["background", "cap", "stem"]
IMAGE, RES = 64, 16  # exported image side, quantify.resolution
# A refused import of a hostile file must not grow the process by more than this (the
# importer holds at most a few masks of IMAGE^2 pixels; the cases allocated
# 4-15 GB). Checked under RLIMIT_AS in a subprocess, so a regression fails instead of
# exhausting the machine.
IMPORT_AS_LIMIT = 3 << 30


@pytest.fixture
def d(tmp_path):
  """A label directory as export leaves it (one image 'a', 64 px, quantify resolution 16)."""
  d = layout.LabelDir(str(tmp_path / "labels_dir"))
  io.write_json(d.part_names_file, PARTS)
  io.write_json(d.export_file, {"names": ["a"], "image_size": IMAGE, "resolution": RES})
  os.makedirs(d.sub("w"))
  np.save(d.w("a"), np.zeros((3, 4), np.float32))
  return d


def _labelme(shapes, h=IMAGE, w=IMAGE):
  return {"imageHeight": h, "imageWidth": w, "shapes": shapes}


def _square(x0=10, y0=10, side=40, label="cap"):
  return {"label": label, "shape_type": "polygon",
          "points": [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]]}


def _import(d, src, **kw):
  with pytest.raises(masks.LabelError) as e:
    importer.import_masks(d, str(src), **kw)
  text = str(e.value)
  assert "\n" not in text, text
  assert not os.path.exists(d.sub("labels"))  # nothing written
  return text


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300, -1e300])
def test_silent_labelme_non_finite_or_huge_vertex_refused(d, tmp_path, bad):
  src = tmp_path / "src"
  src.mkdir()
  sq = _square()
  sq["points"][2] = [bad, 50]
  # json.dumps writes NaN / Infinity, which LabelMe's Python json.load reads back.
  (src / "a.json").write_text(json.dumps(_labelme([sq])))
  text = _import(d, src)
  assert text.startswith(str(src / "a.json")) and "point 2" in text and "finite" in text


def test_silent_labelme_square_drawn_as_declared(d, tmp_path):
  """The control: the 41 x 41 px square the hostile vertex replaced (PIL polygons include
  their edges)."""
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.json").write_text(json.dumps(_labelme([_square()])))
  got = masks.read_labelme(str(src / "a.json"), PARTS, (IMAGE, RES))
  assert (got == 1).sum() == 41 * 41 and got[10:51, 10:51].all()


def test_silent_two_label_files_for_one_image_refused(d, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.json").write_text(json.dumps(_labelme([_square()])))
  y = np.zeros((IMAGE, IMAGE), np.int32)
  y[:20] = 2
  (src / "a.png").write_bytes(masks.indexed_png(y, len(PARTS)))
  text = _import(d, src)
  assert "two label files for image 'a'" in text and "a.json" in text and "a.png" in text


def test_browser_copies_of_one_format_still_newest_wins(d, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  y1, y2 = np.zeros((IMAGE, IMAGE), np.int32), np.zeros((IMAGE, IMAGE), np.int32)
  y1[:8], y2[:8] = 1, 2
  (src / "a.png").write_bytes(masks.indexed_png(y1, 3))
  (src / "a (1).png").write_bytes(masks.indexed_png(y2, 3))
  now = time.time()
  os.utime(src / "a.png", (now - 60, now - 60))
  importer.import_masks(d, str(src))
  assert np.load(d.labels("a")).max() == 2


def _cvat(src, labelmap: bytes):
  (src / "SegmentationClass").mkdir(parents=True)
  (src / "labelmap.txt").write_bytes(labelmap)
  rgb = np.zeros((IMAGE, IMAGE, 3), np.uint8)
  rgb[:10] = (250, 50, 83)
  Image.fromarray(rgb).save(src / "SegmentationClass" / "a.png")


def test_silent_cvat_duplicate_colour_refused(d, tmp_path):
  src = tmp_path / "cvat"
  _cvat(src, b"background:0,0,0::\ncap:250,50,83::\nstem:250,50,83::\n")
  text = _import(d, src)
  assert "colour (250, 50, 83) is given to both 'cap' and 'stem'" in text


def test_silent_colour_table_duplicate_colour_refused(d, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  Image.fromarray(np.zeros((IMAGE, IMAGE, 3), np.uint8)).save(src / "a.png")
  with pytest.raises(masks.LabelError, match="given to both 'cap' and 'stem'"):
    importer.import_masks(d, str(src), colours={"cap": "#ff0000", "stem": [255, 0, 0]})
  # a part's colour equal to another part's palette colour: the same ambiguity
  with pytest.raises(masks.LabelError, match="given to both"):
    importer.import_masks(d, str(src), colours={"cap": [0, 128, 0]})  # stem's palette colour


def test_traceback_cvat_labelmap_not_utf8(d, tmp_path):
  src = tmp_path / "cvat"
  _cvat(src, b"background:0,0,0::\ncap\xff\xfe:250,50,83::\n")
  text = _import(d, src)
  assert text.startswith(str(src / "labelmap.txt")) and "not UTF-8" in text


@pytest.mark.parametrize("value", [None, [1, [2]], {"r": 1}, "nope", [True, 0, 0]])
def test_traceback_colours_null_or_malformed(tmp_path, value):
  path = tmp_path / "colours.json"
  path.write_text(json.dumps({"cap": value}))
  with pytest.raises(masks.LabelError, match="is not '#rrggbb'"):
    importer.read_colours(str(path))
  path.write_text("null")
  with pytest.raises(masks.LabelError, match="expected {part name: colour}, got NoneType"):
    importer.read_colours(str(path))


LABELME_MALFORMED = {
    # name: (document, what the one line says)
    "shapes-dict": (_labelme({"label": "cap"}), "'shapes' is a dict"),
    "shapes-string": (_labelme("cap"), "'shapes' is a str"),
    "shape-string": (_labelme(["cap"]), "shape 0 is a str"),
    "points-3d": (_labelme([{**_square(), "points": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}]), "points must be"),
    "points-string": (_labelme([{**_square(), "points": "1,2 3,4 5,6"}]), "points must be"),
    "points-strings": (_labelme([{**_square(), "points": [["1", "2"], ["3", "4"], ["5", "6"]]}]), "points must be"),
    "points-null": (_labelme([{**_square(), "points": None}]), "points must be"),
    "points-scalar": (_labelme([{**_square(), "points": 5}]), "points must be"),
    "points-scalars": (_labelme([{**_square(), "points": [1, 2, 3]}]), "points must be"),
    "points-null-pair": (_labelme([{**_square(), "points": [None, None, None]}]), "points must be"),
    "negative-size": (_labelme([_square()], h=-64, w=-64), "imageHeight -64 is not a positive"),
    "zero-size": (_labelme([_square()], h=0, w=64), "imageHeight 0 is not a positive"),
    "string-size": (_labelme([_square()], h="64", w=64), "imageHeight '64' is not a positive"),
    "not-an-object": ([1, 2, 3], "not a LabelMe JSON file"),
    "label-not-string": (_labelme([{**_square(), "label": ["cap"]}]), "label ['cap'], which is not"),
}


@pytest.mark.parametrize("case", sorted(LABELME_MALFORMED))
def test_traceback_labelme_malformed_shapes(d, tmp_path, case):
  doc, message = LABELME_MALFORMED[case]
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.json").write_text(json.dumps(doc))
  text = _import(d, src)
  assert text.startswith(str(src / "a.json")) and message in text, text


def test_traceback_labelme_deep_nesting(d, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  depth = 100_000  # json's recursive decoder needs far more than Python's default limit
  (src / "a.json").write_text('{"imageHeight": 64, "imageWidth": 64, "shapes": ' + "[" * depth + "]" * depth + "}")
  text = _import(d, src)
  assert text.startswith(str(src / "a.json")) and "nested too deeply" in text


def _run_capped(args, limit=IMPORT_AS_LIMIT, timeout=120):
  import resource
  cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
  return subprocess.run([sys.executable, "-c", args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, preexec_fn=cap)


_IMPORT_SCRIPT = """
import sys
from lis_jax.label import importer, layout, masks
try:
  importer.import_masks(layout.LabelDir(sys.argv[1]), sys.argv[2])
except masks.LabelError as e:
  print(f"error: {e}", file=sys.stderr)
  sys.exit(1)
"""


def _capped_import(d, src):
  proc = _run_capped(_IMPORT_SCRIPT.replace("sys.argv[1]", repr(d.root)).replace("sys.argv[2]", repr(str(src))))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
  assert not os.path.exists(d.sub("labels"))
  return lines[0]


@pytest.mark.parametrize("side", [1_000_000, 30_000])
def test_memory_labelme_declared_size_checked_before_canvas(d, tmp_path, side):
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.json").write_text(json.dumps(_labelme([_square()], h=side, w=side)))  # ~200 bytes
  line = _capped_import(d, src)
  assert f"size mismatch: the mask is {side} x {side} but its image is 64 x 64 or 16 x 16" in line


def _big_png(path, side):
  """A tiny file declaring a side x side RGBA image (one zlib stream of zero rows)."""
  import struct
  import zlib
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  comp = zlib.compressobj(9)
  row = b"\0" * (1 + 4 * side)
  body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0))
                   + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_memory_png_dimensions_checked_before_decoding(d, tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  _big_png(src / "a.png", 12_000)
  assert (src / "a.png").stat().st_size < 1_000_000
  line = _capped_import(d, src)
  assert "size mismatch: the mask is 12000 x 12000" in line


@pytest.mark.parametrize("side", [12_000, 20_000])
def test_traceback_png_bomb_without_known_size(tmp_path, side):
  """Read without an image size (masks.read_png): PIL's bomb limit is ours, caught (12000^2
  is past the limit, 20000^2 past twice it, where PIL raises DecompressionBombError)."""
  _big_png(tmp_path / "a.png", side)
  with pytest.raises(masks.LabelError, match="beyond the .* pixels read|too large to read"):
    masks.read_png(str(tmp_path / "a.png"), PARTS)


# ----------------------------------------------------------------------------- label export / suggest

# python + jax + the tiny config loaded, no generator run: ~0.5 GiB resident; the issue's
# --n=1e8 built 2e8 names (>10 GB) and --batch_size=1e6 asked for 98 GB.
EXPORT_AS_LIMIT = 6 << 30


def _label_cli(tmp_path, *flags):
  import resource
  cap = lambda: resource.setrlimit(resource.RLIMIT_AS, (EXPORT_AS_LIMIT, EXPORT_AS_LIMIT))
  return subprocess.run(
      [sys.executable, "-m", "lis_jax.label", "export", "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'work'}", "--config.quantify.labels=seg", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=180, preexec_fn=cap)


@pytest.mark.parametrize("flag,message", [
    ("--n=100000000", "--n=100000000: 100000000 x 3 classes = 300000000 images"),
    ("--batch_size=1000000", "--batch_size=1000000: expected 1..1024"),
    ("--batch_size=0", "--batch_size=0: expected 1..1024"),
    ("--n=0", "--n=0: export at least one image per class")])
def test_memory_label_export_counts_refused_first(tmp_path, flag, message):
  proc = _label_cli(tmp_path, flag)
  lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error: ")]
  assert proc.returncode == 1 and len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "work" / "seg" / "images")  # nothing exported


def _object_npy(path):
  with open(path, "wb") as f:
    np.save(f, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("which", ["w", "labels"])
def test_traceback_object_arrays_in_label_dir(d, which):
  os.makedirs(d.sub("labels"), exist_ok=True)
  np.save(d.labels("a"), np.ones((RES, RES), np.int32))
  _object_npy(d.w("a") if which == "w" else d.labels("a"))
  path = d.w("a") if which == "w" else d.labels("a")
  with pytest.raises(errors.PipelineError, match="not a numeric .npy array") as e:
    layout.load_array(path)
  assert str(e.value).startswith(path) and "\n" not in str(e.value)


def test_traceback_object_array_refused_by_suggest(tmp_path):
  """`label suggest` on a label dir whose w/a.npy is a pickled object array: one line."""
  from configs import tiny
  from lis_jax import stages
  from lis_jax.label import suggest
  config = tiny.get_config()
  config.quantify.labels = "seg"
  ctx = stages.context(config, str(tmp_path))
  d = layout.label_dir("seg", str(tmp_path))
  io.write_json(d.part_names_file, PARTS)
  io.write_json(d.export_file, {"names": ["a", "b"], "image_size": 16, "resolution": 16})
  os.makedirs(d.sub("w"))
  os.makedirs(d.sub("labels"))
  np.save(d.labels("a"), np.ones((16, 16), np.int32))
  _object_npy(d.w("a"))
  with pytest.raises(errors.PipelineError, match="not a numeric .npy array"):
    suggest.suggest(ctx)


@pytest.mark.parametrize("doc", [{"names": "a", "image_size": 64, "resolution": 16},
                                 {"names": ["a"], "image_size": 10 ** 9, "resolution": 16},
                                 {"names": ["a"], "image_size": 64, "resolution": -1},
                                 {"names": ["../../x"], "image_size": 64, "resolution": 16}])
def test_traceback_export_json_checked(d, doc):
  io.write_json(d.export_file, doc)
  with pytest.raises(errors.PipelineError, match="expected {names"):
    layout.read_export(d)


def test_silent_label_content_hash_changes_with_a_mask(d):
  """The segmenter's fingerprint input: a changed mask, part list or w changes it."""
  os.makedirs(d.sub("labels"))
  y = np.zeros((RES, RES), np.int32)
  y[:4] = 1
  np.save(d.labels("a"), y)
  first = d.content_sha256()
  assert d.content_sha256() == first  # deterministic
  y[4, 0] = 2
  np.save(d.labels("a"), y)
  second = d.content_sha256()
  assert second != first
  io.write_json(d.part_names_file, PARTS + ["gills"])
  assert d.content_sha256() not in (first, second)


# ----------------------------------------------------------------------------- stage settings

SETTINGS = [
    # (section, field, value, what the one line says)
    ("invariances", "batch_size", 0, "config.invariances.batch_size=0 must be"),
    ("invariances", "save_every", 0, "config.invariances.save_every=0 must be"),
    ("invariances", "conditions_per_block", 0, "config.invariances.conditions_per_block=0 must be"),
    ("invariances", "n_mix", 0, "config.invariances.n_mix=0 must be"),
    ("invariances", "samples_per_condition", 0, "config.invariances.samples_per_condition=0 must be"),
    ("invariances", "n_conditions", 0, "config.invariances.n_conditions=0 must be"),
    ("invariances", "hidden", 0, "config.invariances.hidden=0 must be"),
    ("boundary", "n_boot", 0, "config.boundary.n_boot=0 must be"),
    ("boundary", "level", float("nan"), "config.boundary.level=nan must be a finite number"),
    ("boundary", "level", 15.0, "config.boundary.level=15.0 must be in (0.0, 1.0)"),
    ("boundary", "n_points", 10 ** 9, "config.boundary.n_points=1000000000 must be"),
    ("boundary", "batch_size", 10 ** 9, "config.boundary.batch_size=1000000000 must be"),
    ("boundary", "measure_batch", 0, "config.boundary.measure_batch=0 must be"),
    ("boundary", "n_iter", 100000, "float32"),
    ("boundary", "alpha", -1.0, "config.boundary.alpha=-1.0 must be in (0.0, 1.0)"),
    ("boundary", "top_k", 0, "config.boundary.top_k=0 must be"),
    ("boundary", "top_k", -1, "config.boundary.top_k=-1 must be"),
    ("population", "n_boot", 0, "config.population.n_boot=0 must be"),
    ("population", "n_boot", -5, "config.population.n_boot=-5 must be"),
    ("population", "n_perm", 10 ** 8, "config.population.n_perm=100000000 must be"),
    ("quantify", "head", "XXL", "config.quantify.head='XXL' must be one of XXS, XS, S, M, L"),
]


@pytest.mark.parametrize("section,field,value,message", SETTINGS,
                         ids=[f"{s}.{f}={v}" for s, f, v, _ in SETTINGS])
def test_settings_refused_before_anything_runs(tmp_path, section, field, value, message):
  from configs import tiny
  from lis_jax import stages
  config = tiny.get_config()
  config[section][field] = value
  ctx = stages.context(config, str(tmp_path))
  with pytest.raises(errors.PipelineError) as e:
    ctx.validate(list(stages.REGISTRY))
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
  assert not any(tmp_path.iterdir())  # nothing written


def test_settings_cli_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "lis_jax.main", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
       "--config.boundary.n_iter=100000"], cwd=ROOT, capture_output=True, text=True, timeout=180)
  lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln]
  assert proc.returncode == 1 and len(lines) == 1 and "n_iter" in lines[0], proc.stderr[-2000:]


# ----------------------------------------------------------------------------- report swap


class _FakeCtx:
  """Just what report.run reads: a registry of sections, cfg('report'), out_dir, workdir."""

  def __init__(self, workdir, registry):
    import ml_collections
    self.workdir, self.registry = str(workdir), registry
    self._cfg = ml_collections.ConfigDict({"sections": "all"})

  def cfg(self, name):
    return self._cfg

  def out_dir(self, name):
    return os.path.join(self.workdir, name)


def _stage(section):
  import types
  return types.SimpleNamespace(section=section, summary=None)


def test_data_loss_failed_report_run_deletes_nothing(tmp_path):
  from lis_jax.stages import report
  rep = tmp_path / "report"
  rep.mkdir()
  old = {n: f"old {n}".encode() for n in report.FIGURES + ("index.html", "summary.json")}
  for n, data in old.items():
    (rep / n).write_bytes(data)

  def sweep_section(ctx):  # writes its figure, as the sweep stage does
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(ctx.out_dir("report"), "sweeps.png"))
    return "<h2>sweeps</h2>"

  def failing_section(ctx):
    raise errors.PipelineError("boundary: outputs of a different config (generator)")

  ctx = _FakeCtx(tmp_path, {"sweep": _stage(sweep_section), "boundary": _stage(failing_section)})
  with pytest.raises(errors.PipelineError, match="different config"):
    report.run(ctx)
  assert {n: (rep / n).read_bytes() for n in old} == old  # every old file as it was
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging left

  ctx = _FakeCtx(tmp_path, {"sweep": _stage(sweep_section)})  # a run that succeeds
  report.run(ctx)
  assert "<h2>sweeps</h2>" in (rep / "index.html").read_text()
  assert (rep / "sweeps.png").read_bytes() != old["sweeps.png"]
  assert not (rep / "counterfactuals.png").exists()  # not made by this run: removed at the swap
  assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# ----------------------------------------------------------------------------- quantify labels


def _labelled_workdir(tmp_path, parts=None):
  """A tiny run context whose quantify.labels directory holds the world's own masks of
  the images `label export` wrote (one per class)."""
  from configs import demo
  from lis_jax import stages
  from lis_jax.label import export
  from lis_jax.quantify import segment
  config = demo.get_config()
  config.generator = "tests.test_label_roundtrip:small_world"  # the shapes world at 32 px
  config.quantify.resolution = 0
  config.quantify.labels = "seg"
  config.quantify.epochs = 1
  config.quantify.n_labelled = 2
  ctx = stages.context(config, str(tmp_path))
  d = export.export(ctx, 1, batch_size=4)
  names = layout.read_export(d)["names"]
  ws = np.stack([np.load(d.w(n)) for n in names])
  res = ctx.cfg("quantify").resolution or ctx.G.resolution
  labels, world_parts = segment.ground_truth_labels(ctx.G, segment.as_ws(ws, ctx.G.num_ws), res)
  os.makedirs(d.sub("labels"), exist_ok=True)
  for n, y in zip(names, np.asarray(labels)):
    np.save(d.labels(n), y.astype(np.int32))
  io.write_json(d.part_names_file, list(parts or world_parts))
  os.makedirs(ctx.out_dir("quantify"), exist_ok=True)
  return ctx, d, names


def test_silent_changed_mask_retrains_the_segmenter(tmp_path, capsys):
  from lis_jax.stages import quantify
  ctx, d, names = _labelled_workdir(tmp_path)
  quantify.segmenter(ctx)
  assert "segmenter:" in capsys.readouterr().out  # trained
  quantify.segmenter(ctx)
  assert capsys.readouterr().out == ""  # the same labels: loaded
  y = np.load(d.labels(names[0]))
  y[0, :] = 1 - (y[0, :] > 0)  # one row of one mask changed
  np.save(d.labels(names[0]), y)
  (tmp_path / "quantify" / "block_00000.npz").write_bytes(b"measured by the old segmenter")
  quantify.segmenter(ctx)
  out = capsys.readouterr().out
  assert "labels in seg changed since the segmenter was trained" in out and "segmenter:" in out
  assert not (tmp_path / "quantify" / "block_00000.npz").exists()  # measured again


def test_traceback_labels_parts_differ_from_the_world(tmp_path):
  from lis_jax.quantify import segment
  from lis_jax.stages import quantify
  ctx, d, _ = _labelled_workdir(tmp_path)
  world = layout.read_part_names(d)
  io.write_json(d.part_names_file, [p if p != world[1] else "head" for p in world])
  with pytest.raises(segment.SegmentationError, match="differ from the world's") as e:
    quantify.segmenter(ctx)
  assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- readers downstream


def _boundary_batch(**change):
  b = {"search": np.arange(4), "origin": np.zeros(4, np.int64), "target": np.ones(4, np.int64),
       "t_leave": np.array([0.2, 0.3, np.nan, 0.5]), "t_reach": np.array([0.4, np.nan, np.nan, 0.6]),
       "leave_found": np.array([True, True, False, True]), "reach_found": np.array([True, False, False, True]),
       "width": np.full(4, 0.01), "pred_grid": np.zeros((4, 3), np.int64),
       "pt.area": np.full((4, 4, 2), 0.1), "null.area": np.full((4, 1, 2), 0.1)}
  b.update(change)
  return b


@pytest.mark.parametrize("case,change,message", [
    ("nan-area", {"pt.area": np.full((4, 4, 2), np.nan)}, "pt.area holds NaN"),
    ("nan-search", {"width": np.array([0.01, np.nan, 0.01, 0.01])}, "width holds NaN"),
    ("reach-found-nan-t", {"t_reach": np.array([np.nan, np.nan, np.nan, 0.6])}, "reach_found disagrees with t_reach"),
    ("leave-found-nan-t", {"leave_found": np.array([True, True, True, True])}, "leave_found disagrees with t_leave")])
def test_silent_boundary_batch_checked_on_read(tmp_path, capsys, case, change, message):
  from lis_jax.stages import boundary
  store = boundary._store(str(tmp_path))
  os.makedirs(store.directory)
  store.write(0, **_boundary_batch())
  store.write(1, **_boundary_batch(**change))  # a valid checksum over a value never written
  with pytest.raises(io.CorruptFileError, match=message):
    boundary.load_batches(str(tmp_path))
  boundary.drop_bad_batches(str(tmp_path), 2)
  assert "recomputing it" in capsys.readouterr().out
  assert os.path.exists(store.path(0)) and not os.path.exists(store.path(1))
  assert len(boundary.load_batches(str(tmp_path))) == 1


def test_silent_truncated_selectivity_csv_refused(tmp_path):
  from lis_jax.stages import quantify
  q = tmp_path / "quantify"
  q.mkdir()
  cols = ["unit", "part", "metric", "mean", "ci_low", "ci_high", "n", "null_rms", "effect", "p_null",
          "selective", "rank"]
  rows = [[u, "cap", "area", 0.1, 0.0, 0.2, 8, 0.1, 1.0, 0.01, True, 1] for u in range(40)]
  text = ",".join(cols) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
  (q / "selectivity.csv").write_text(text)
  io.write_json(str(q / "manifest.json"), {"n_blocks": 1, "selectivity_sha256": io.sha256_file(str(q / "selectivity.csv"))})
  assert len(quantify.load(str(tmp_path)).rows) == 40  # intact: read
  lines = text.splitlines(keepends=True)
  (q / "selectivity.csv").write_text("".join(lines[:21]))  # cut to half its rows
  with pytest.raises(io.CorruptFileError, match="does not match the checksum"):
    quantify.load(str(tmp_path))
  (q / "selectivity.csv").write_text(text[:len(text) // 2])  # cut mid-row, no checksum recorded
  io.write_json(str(q / "manifest.json"), {"n_blocks": 1})
  with pytest.raises(io.CorruptFileError, match="unreadable row"):
    quantify.load(str(tmp_path))
