"""HTML building blocks of the report page (tables, figures, the page itself).

Text is escaped where it lands: `table` escapes every cell that is not `Raw` (markup this
module built: `escape`, `img`, `raw`), so a part, class or file name from a user's file
(`<img src=x onerror=...>`, `<!--<script>`) is shown as text, never run.
"""
from __future__ import annotations

import html as _html
import json
import re

import numpy as np

from lis_jax import images


class Raw(str):
  """A string that is already HTML (escaped text or markup built here): `table` keeps it."""


def raw(s: str) -> Raw:
  """Marks trusted markup (built from escaped parts) as HTML for `table`."""
  return Raw(s)


def escape(s, quote: bool = True) -> Raw:
  """Text -> HTML text (&, <, >, and quotes escaped), marked `Raw` so it is not escaped twice."""
  return Raw(_html.escape(str(s), quote))


# An HTML character reference: left alone by `escape_once`.
_ENTITY = re.compile(r"&(?!(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);)")


def escape_once(s) -> Raw:
  """Like `escape`, but character references already in `s` (`&amp;`, `&#x27;`) are kept:
  safe for text that may or may not have been escaped (no tag or attribute can survive)."""
  s = _ENTITY.sub("&amp;", str(s))
  return Raw(s.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("'", "&#x27;"))


def script_json(obj) -> str:
  """`obj` as JSON safe inside <script> (also type=application/json): <, >, & and U+2028/9
  become JSON unicode escapes, so no `</script>`, `<!--` or `<script>` can reach the HTML
  parser (the value JSON.parse returns is unchanged)."""
  s = json.dumps(obj, ensure_ascii=True, allow_nan=False)
  for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                  ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
    s = s.replace(ch, esc)
  return s


def _cell(v, escape_cells: bool) -> str:
  if isinstance(v, Raw):
    return v
  return _html.escape(str(v)) if escape_cells else escape_once(v)


def table(cols, rows, escape_cells: bool = True) -> str:
  """An HTML table: header `cols`, one <tr> per row of `rows`.

  Cells that are `Raw` (from `escape`, `img`, `raw`) go in as they are; any other cell is
  escaped (escape_cells=False: with `escape_once`, for callers that escaped some cells with
  html.escape themselves; a tag in such a cell is still shown as text).
  """
  head = "".join(f"<th>{_cell(c, True)}</th>" for c in cols)
  body = "".join("<tr>" + "".join(f"<td>{_cell(v, escape_cells)}</td>" for v in r) + "</tr>"
                 for r in rows)
  return f"<table><tr>{head}</tr>{body}</table>"


def img(uint8: np.ndarray, scale: int = 1) -> Raw:
  """An inline <img> of a uint8 [H, W, 3] image."""
  return Raw(f"<img src='{images.png_uri(uint8, scale)}'>")


def fmt(x, digits: int = 3) -> str:
  """A number for the page; 'n/a' for None, NaN and inf."""
  return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def toc(body: str) -> str:
  """A table of contents: a link to each <section id=...> of `body`, titled by its first <h2>."""
  import re
  items = []
  for m in re.finditer(r'<section id="([^"]+)">(.*?)</section>', body, re.S):
    h2 = re.search(r"<h2>(.*?)</h2>", m.group(2), re.S)
    title = re.sub(r"<[^>]+>", "", h2.group(1)) if h2 else m.group(1)
    items.append(f'<li><a href="#{m.group(1)}">{title}</a></li>')
  return f'<nav class="toc"><b>Contents</b><ul>{"".join(items)}</ul></nav>' if items else ""


def document(title: str, workdir: str, body: str) -> str:
  """The page: title, workdir, a table of contents of the sections, the sections."""
  return _PAGE.format(title=_html.escape(title), workdir=_html.escape(workdir), toc=toc(body), body=body)


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; display: block; max-width: 100%; overflow-x: auto; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.9em; }}
img {{ image-rendering: pixelated; max-width: 100%; height: auto; }}
figure.plot img {{ image-rendering: auto; }}
figure {{ margin: 0.6em 0; max-width: 100%; }} figcaption {{ font-size: 0.85em; color: #555; }}
section {{ border-top: 2px solid #ddd; padding-top: 0.5em; }}
.card {{ max-width: 100%; overflow-x: auto; }}
nav.toc {{ background: #f6f6f6; padding: 0.4em 1em; }} nav.toc li {{ margin: 0.15em 0; }}
</style></head>
<body><h1>{title}</h1><p>workdir: <code>{workdir}</code></p>
{toc}
{body}
</body></html>
"""
