"""No import cycle inside lis_jax, and `import lis_jax` never needs torch.

The graph is read from the source (ast): an edge A -> B for every `import B` /
`from B import x` / `from pkg import B` in A, at module level or inside a function.
"""
import ast
import pathlib
import subprocess
import sys

from conftest import ROOT

PKG = pathlib.Path(ROOT) / "lis_jax"
# Deferred imports allowed to close a cycle, with the reason (none: the runner imports
# the stages, which import lis_jax.context and libraries, never the runner).
ALLOWED_DEFERRED: set[tuple[str, str]] = set()


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PKG.rglob("*.py"):
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _edges(mods: dict[str, pathlib.Path]) -> dict[str, set[tuple[str, bool]]]:
  """module -> {(imported lis_jax module, deferred?)}."""
  edges = {}
  for name, path in mods.items():
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = name.split(".") if is_pkg else name.split(".")[:-1]
          anchor = anchor[:len(anchor) - node.level + 1]
          base = ".".join(anchor + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      for t in targets:
        if t in mods and t != name:
          found.add((t, id(node) not in top))
    edges[name] = found
  return edges


def _cycle(edges, skip=frozenset()):
  """A cycle as a list of modules, or None."""
  state = {}

  def visit(m, stack):
    state[m] = 1
    for t, deferred in sorted(edges.get(m, ())):
      if (m, t) in skip:
        continue
      if state.get(t) == 1:
        return stack[stack.index(t):] + [t]
      if t not in state:
        found = visit(t, stack + [t])
        if found:
          return found
    state[m] = 2
    return None

  for m in sorted(edges):
    if m not in state:
      found = visit(m, [m])
      if found:
        return found
  return None


def test_no_import_cycle_inside_lis_jax():
  mods = _modules()
  edges = _edges(mods)
  assert "lis_jax.stages.quantify" in edges and edges["lis_jax.pipeline"]   # the parser sees them
  for a, b in ALLOWED_DEFERRED:
    assert (b, True) in edges[a], f"{a} -> {b} is no longer deferred-imported: drop it from ALLOWED_DEFERRED"
  assert _cycle(edges, skip=frozenset(ALLOWED_DEFERRED)) is None, _cycle(edges, ALLOWED_DEFERRED)


def test_cycle_finder_finds_a_planted_cycle():
  edges = {"a": {("b", False)}, "b": {("c", True)}, "c": {("a", False)}}
  assert _cycle(edges) == ["a", "b", "c", "a"]
  assert _cycle(edges, skip=frozenset({("b", "c")})) is None


def test_importing_every_stage_needs_no_torch():
  code = ("import sys, lis_jax.stages, lis_jax.main; "
          "assert 'torch' not in sys.modules, 'torch imported'")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
