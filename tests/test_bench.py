"""Every ``bench.py --what=...`` runs end to end at its smallest settings (``--quick``).

These are smoke tests of the benchmarks' code paths, not measurements. (``--what=diffusion``
has its own tests in test_track.py.)
"""

import json

import pytest
from conftest import run_script

QUICK = ["simulate", "train", "locate", "startup", "fit", "tradeoff"]


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
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads(output.read_text())
  assert record and "Traceback" not in result.stderr
  if what == "tradeoff":
    assert {"trackpy_1_process", "tiny"} <= set(record["rows"]), record["rows"].keys()
