"""Every ``bench.py --what=...`` runs end to end at its smallest settings (``--quick``).

These are smoke tests of the benchmarks' code paths, not measurements. (``--what=diffusion``
has its own tests in test_track.py.)
"""

import json
import math

import pytest
from conftest import run_script, smoke_env

# --what=fit's smoke run is in test_fit_microscope.py, beside the fit it shares programs with.
QUICK = ["simulate", "train", "locate", "startup", "tradeoff", "compile"]


@pytest.mark.parametrize("what", QUICK)
def test_bench_runs_quick(what, tmp_path):
  output = tmp_path / f"bench_{what}.json"
  result = run_script(
    "bench.py",
    f"--what={what}",
    "--quick",
    "--repeats=1",
    f"--output={output}",
    f"--workdir={tmp_path / 'work'}",
    env=smoke_env(),
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(output.read_text())
  assert record and "Traceback" not in result.stderr
  if what == "tradeoff":
    assert {"trackpy_1_process", "tiny"} <= set(record["rows"]), record["rows"].keys()
  if what == "compile":  # --quick: two programs, each under every setting, O3 the reference
    assert set(record["rows"]) == {"detector", "mle_fit"}
    for settings in record["rows"].values():
      assert set(settings) == {"O3", "O1_loops"}
      assert settings["O3"]["max_abs_diff"] == 0
      assert all(math.isfinite(row["run_s"]) and row["compile_s"] > 0 for row in settings.values())


@pytest.mark.parametrize("what", ["motion", "texture"])
def test_tissue_benches_run_quick(what, tmp_path):
  """The tissue-motion and texture benches with the shipped default model (no workdir)."""
  output = tmp_path / f"bench_{what}.json"
  # The motion bench is mostly registration, which ran faster at the suite's flags than at
  # SMOKE_XLA's even from a cold cache (conftest).
  env = None if what == "motion" else smoke_env()
  result = run_script(
    "bench.py", f"--what={what}", "--quick", f"--output={output}", env=env, cwd=tmp_path
  )
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(output.read_text())
  assert "Traceback" not in result.stderr
  if what == "motion":  # A = 0 and 2 um at D = 0.2, every row measured
    assert set(record["cells"]) == {"A=0um,D=0.2", "A=2um,D=0.2"}
    for cell in record["cells"].values():
      assert {"qdjax", "uncorrected", "truth_true_motion"} <= set(cell)
      assert all(math.isfinite(cell[row]["mean_ratio"]) for row in ("qdjax", "truth_true_motion"))
  else:
    for cell in record["cells"].values():
      assert list(cell) == ["general_fast", "general_fast+background"]
      assert 0 <= cell["general_fast"]["false_share"] <= 1
