"""Every random stream the code draws from is listed in docs/architecture.md.

The stream names are read from the source (ast): the first argument of every
`ctx.key(...)`, `ctx.seed(...)` and `ctx.rng(...)` call in lis_jax, a string literal, the
module's `NAME`, or an f-string of those (another value in it reads as `<expr>`, as the
docs write `population.link.<kind>`). A stage draws nothing from the raw `config.seed`.
"""
import ast
import pathlib
import re

from conftest import ROOT

PKG = pathlib.Path(ROOT) / "lis_jax"
DOC = pathlib.Path(ROOT) / "docs" / "architecture.md"
STREAM_METHODS = ("key", "seed", "rng")


def _module_name(tree: ast.Module) -> str | None:
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "NAME"
        and isinstance(node.value, ast.Constant)):
      return node.value.value
  return None


def _stream(arg: ast.AST, name: str | None) -> str | None:
  """The stream a call's first argument names, or None if it is not readable."""
  if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
    return arg.value
  if isinstance(arg, ast.Name) and arg.id == "NAME":
    return name
  if isinstance(arg, ast.JoinedStr):
    out = []
    for v in arg.values:
      if isinstance(v, ast.Constant):
        out.append(v.value)
      elif isinstance(v.value, ast.Name) and v.value.id == "NAME" and name:
        out.append(name)
      else:
        out.append(f"<{ast.unparse(v.value)}>")
    return "".join(out)
  return None


def streams_in(source: str) -> tuple[set[str], list[str]]:
  """(stream names, unreadable calls) of `ctx.key/seed/rng(...)` calls in `source`."""
  tree = ast.parse(source)
  name = _module_name(tree)
  found, unreadable = set(), []
  for node in ast.walk(tree):
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        and node.func.attr in STREAM_METHODS and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "ctx" and node.args):
      s = _stream(node.args[0], name)
      if s is None:
        unreadable.append(ast.unparse(node))
      else:
        found.add(s)
  return found, unreadable


def code_streams() -> set[str]:
  found, unreadable = set(), []
  for path in sorted(PKG.rglob("*.py")):
    f, u = streams_in(path.read_text())
    found |= f
    unreadable += [f"{path.relative_to(ROOT)}: {c}" for c in u]
  assert not unreadable, f"stream names the test cannot read (use a literal or NAME): {unreadable}"
  return found


def documented_streams() -> set[str]:
  """The backquoted names in docs/architecture.md's stream table (rows `| \\`name\\` | ...`)."""
  return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", DOC.read_text(), re.M))


def test_every_stream_is_documented():
  streams = code_streams()
  assert {"paired_data", "link.split", "quantify.null", "population.link.<kind>"} <= streams, streams
  missing = sorted(streams - documented_streams())
  assert not missing, f"streams drawn in the code but not listed in docs/architecture.md: {missing}"


def test_no_documented_stream_is_gone():
  gone = sorted(documented_streams() - code_streams())
  assert not gone, f"docs/architecture.md lists streams the code no longer draws: {gone}"


def test_the_reader_sees_literals_names_and_fstrings():
  src = ('NAME = "st"\n'
         'def f(ctx, kind):\n'
         '  ctx.key("a.b", 1); ctx.key(NAME); ctx.seed(f"{NAME}.x"); ctx.rng(f"{NAME}.l.{kind}")\n'
         '  ctx.key(kind)\n')
  found, unreadable = streams_in(src)
  assert found == {"a.b", "st", "st.x", "st.l.<kind>"}
  assert unreadable == ["ctx.key(kind)"]


def test_no_stage_seeds_from_the_raw_config_seed():
  """A stage's draws come from its streams: `config.seed` only reaches them through ctx."""
  bad = [f"{p.name}:{i + 1}" for p in sorted((PKG / "stages").glob("*.py"))
         for i, line in enumerate(p.read_text().splitlines()) if "config.seed" in line]
  assert not bad, bad
