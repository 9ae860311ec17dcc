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


# Imported only where used: each adds to every command's start-up (`python -m lis_jax.main`
# imports every stage), and most commands (a refused flag, a stage without statistics or
# figures) never use them. Measured on this machine, CPU s to import after numpy: scipy.stats
# 0.85, matplotlib.pyplot 0.5, scipy.linalg 0.2; `python -m lis_jax.main` with an unknown
# stage went from 4.1 to 2.3 CPU s (load 6) when they were deferred.
DEFERRED = ("torch", "scipy.stats", "scipy.special", "scipy.linalg", "matplotlib")


def test_importing_every_stage_needs_no_torch_and_defers_heavy_libraries():
  code = ("import sys, lis_jax.stages, lis_jax.main; "
          f"found = [m for m in {DEFERRED!r} if m in sys.modules]; "
          "assert not found, f'imported at start-up: {found}'")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]


# The layering (docs/architecture.md): the runner is imported by `main` alone, a stage
# module imports libraries and lis_jax.context, never another stage or the runner.
RUNNER = "lis_jax.pipeline"
RUNNER_IMPORTERS = {"lis_jax.main"}
MAX_RUNNER_LINES = 450   # the bound: the runner orders stages, nothing else


def _stage_modules(mods) -> set[str]:
  return {m for m in mods if m.startswith("lis_jax.stages.") and m != "lis_jax.stages.base"}


def test_no_stage_imports_another_stage_or_the_runner():
  mods = _modules()
  edges = _edges(mods)
  stage_mods = _stage_modules(mods)
  assert {"lis_jax.stages.quantify", "lis_jax.stages.boundary"} <= stage_mods   # the parser sees them
  bad = sorted((m, t) for m in stage_mods for t, _ in edges[m]
               if t in stage_mods or t == RUNNER or t == "lis_jax.stages")
  assert not bad, f"stage modules importing a stage or the runner: {bad}"


def test_only_main_imports_the_runner():
  edges = _edges(_modules())
  importers = {m for m, out in edges.items() if any(t == RUNNER for t, _ in out)}
  assert importers == RUNNER_IMPORTERS, importers


def test_runner_is_short():
  n = len((PKG / "pipeline.py").read_text().splitlines())
  assert n < MAX_RUNNER_LINES, f"lis_jax/pipeline.py has {n} lines (< {MAX_RUNNER_LINES} wanted)"


def test_layering_checker_finds_a_planted_stage_import(tmp_path, monkeypatch):
  """The rule above, on a planted package: a stage importing another stage is reported."""
  pkg = tmp_path / "lis_jax"
  (pkg / "stages").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "stages" / "__init__.py").write_text("from lis_jax.stages import a, b\n")
  (pkg / "stages" / "a.py").write_text("def f():\n  from lis_jax.stages import b  # local\n")
  (pkg / "stages" / "b.py").write_text("from lis_jax import pipeline\n")
  (pkg / "pipeline.py").write_text("from lis_jax import stages\n")
  monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
  edges = _edges(_modules())
  assert ("lis_jax.stages.b", True) in edges["lis_jax.stages.a"]
  assert ("lis_jax.pipeline", False) in edges["lis_jax.stages.b"]
  assert _cycle(edges) is not None   # pipeline -> stages -> b -> pipeline
