"""The package's layout: a few top-level modules beside one-concept subpackages, imports
that run one way (no cycle between modules, none between subpackages), and nothing that
reaches outside the installed package. Read from the source, so no JAX is loaded."""

import ast
import graphlib
from pathlib import Path

import pytest

import qdjax

ROOT = Path(qdjax.__file__).parent
MAX_TOP_LEVEL_MODULES = 8


def _modules() -> dict[str, Path]:
  """{dotted name: file} of every module in the package."""
  found = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = ("qdjax", *path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    found[".".join(parts)] = path
  return found


def _imports(name: str, path: Path, known) -> set[str]:
  """The package's modules that ``name`` imports, at its top or inside a function."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module or ""
      # ``from qdjax.sim import movie`` imports the module qdjax.sim.movie.
      targets = [
        f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
        for alias in node.names
      ]
    else:
      continue
    out.update(t for t in targets if t in known and t != name)
  return out


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def _unit(name: str) -> str:
  """A subpackage (``qdjax.sim``) or a top-level module (``qdjax.io``)."""
  return ".".join(name.split(".")[:2])


def _assert_acyclic(graph: dict[str, set[str]]):
  try:
    tuple(graphlib.TopologicalSorter(graph).static_order())
  except graphlib.CycleError as error:
    cycle = error.args[1]
  else:
    return
  pytest.fail(f"import cycle: {' -> '.join(cycle)}", pytrace=False)


def test_the_import_graph_is_read():
  """The reader sees the imports that are there (a test that cannot fail is no test)."""
  graph = _graph()
  assert "qdjax.sim.scan" in graph["qdjax.sim.movie"]  # at the top
  assert "qdjax.sim.movie" in graph["qdjax.tracks.tracking"]  # inside a function
  with pytest.raises(pytest.fail.Exception, match="import cycle"):
    _assert_acyclic({**graph, "qdjax.sim.scan": {"qdjax.tracks.tracking"}})


def test_no_import_cycle_between_modules():
  _assert_acyclic(_graph())


def test_no_import_cycle_between_subpackages():
  units = {}
  for name, imported in _graph().items():
    units.setdefault(_unit(name), set()).update(
      _unit(other) for other in imported if _unit(other) != _unit(name)
    )
  # The package's __init__ loads the public API on first use; nothing imports it back.
  _assert_acyclic(units)


def test_few_top_level_modules():
  top = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
  assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_nothing_reaches_outside_the_package():
  """``Path(__file__).parents[k]`` stays inside the installed package (its data files), and
  no module finds the repository's ``experiments/``."""
  for name, path in _modules().items():
    for node in ast.walk(ast.parse(path.read_text())):
      if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "parents"
        and isinstance(node.slice, ast.Constant)
        and "__file__" in ast.unparse(node.value.value)
      ):
        reached = path.parents[node.slice.value]
        assert reached == ROOT or ROOT in reached.parents, (name, ast.unparse(node))
      if isinstance(node, ast.Constant) and isinstance(node.value, str):
        assert not node.value.startswith(("experiments/", "../experiments")), (name, node.value)
