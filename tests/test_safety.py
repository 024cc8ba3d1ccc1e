"""Data safety and signals of the command lines: no input is ever written over, an output
that cannot be written fails before any work, and every refusal is one line."""

import hashlib
import os

import numpy as np
import pytest
from conftest import assert_one_line_error, run_script


def digest(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_only_line(result, *needles, code):
  """One line on stderr, ``error: ...`` naming every needle, and the exit code."""
  assert_one_line_error(result, *needles, code=code)
  lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


@pytest.fixture
def fit_inputs(tmp_path):
  import tifffile

  frames = np.random.default_rng(0).poisson(2.0, (4, 24, 25)).astype(np.float32)
  tif = tmp_path / "f.tif"
  tifffile.imwrite(tif, frames)
  pmt = tmp_path / "pmt.json"
  pmt.write_text('{"alpha": 0.44, "dark_sigma": 8.1, "offset": -2.74}')
  (tmp_path / "link.tif").symlink_to(tif)
  return tif, pmt, {p: digest(p) for p in (tif, pmt)}


@pytest.mark.parametrize("output", ["f.tif", "pmt.json", "link.tif"])
def test_fit_microscope_never_writes_over_an_input(fit_inputs, output):
  tif, pmt, digests = fit_inputs
  folder = tif.parent
  before = sorted(folder.iterdir())
  result = run_script(
    "fit_microscope.py", f"--input={tif}", f"--pmt={pmt}", f"--output={folder / output}"
  )
  assert_only_line(result, "would overwrite", code=2)
  for file, hashed in digests.items():
    assert digest(file) == hashed, file
  assert sorted(folder.iterdir()) == before


def test_fit_microscope_bad_flag_is_one_line(fit_inputs):
  tif, _, _ = fit_inputs
  result = run_script(
    "fit_microscope.py", f"--input={tif}", f"--output={tif.parent / 'o.json'}", "--config.bogus=1"
  )
  assert_only_line(result, "config.bogus", code=2)
