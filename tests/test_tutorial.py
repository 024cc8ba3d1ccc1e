"""docs/tutorial.md runs: its Python blocks, in order, in one namespace."""

import re
from pathlib import Path

import matplotlib

DOC = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_tutorial_runs(monkeypatch, tmp_path):
  matplotlib.use("Agg")  # a test process, not a notebook
  monkeypatch.chdir(tmp_path)
  blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
  assert len(blocks) >= 5
  namespace: dict = {}
  for i, block in enumerate(blocks):
    exec(compile(block, f"{DOC.name}[block {i + 1}]", "exec"), namespace)
  assert namespace["frames"].shape == (60, 64, 64)
  assert len(namespace["per_track"]) >= 5
  assert (namespace["out"] / "report.png").stat().st_size > 0
