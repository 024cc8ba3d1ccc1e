"""The reproduction map: B(N), the implied sigma, the sample error, the row fit, a cell
against an independent metrics computation, and reproduction.py end to end."""

import json

import numpy as np
import pytest
from conftest import BAD_METHODS, assert_one_line_error

from qdjax.evaluation import metrics
from qdjax.sim import data, presets
from qdjax.study import reproduction, reproduction_rows
from qdjax.study.evaluate import STUDY


def test_background_follows_the_in_vivo_ratio():
  # Spec section 9: amplitude 11-16 photons over 0.6-1.2 photons of background, midpoints 13.5, 0.9.
  assert reproduction.in_vivo_background(13.5) == pytest.approx(0.9)
  assert reproduction.in_vivo_background(30.0) == pytest.approx(2.0)
  for bad in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="peak_photons"):
      reproduction.in_vivo_background(bad)


def test_make_grid_levels():
  config = _config(peak_photons=(3.0, 15.0), preset_level=True)
  grid = reproduction.make_grid(config)
  preset = presets.get("paper")
  own = (preset.values["peak_photons"], preset.values["background_photons"])
  assert grid.levels == ((3.0, 0.2), (15.0, 1.0), own)
  with pytest.raises(ValueError, match="ascending"):
    reproduction.make_grid(_config(diffusion=(2.0, 1.0)))
  with pytest.raises(ValueError, match="diffusion"):
    reproduction.make_grid(_config(diffusion=(-1.0,)))


def test_network_row_implies_the_stated_sigmas():
  network = np.asarray(STUDY["Keypoint R-CNN (paper)"])
  sigmas = [reproduction_rows.implied_sigma_px(network[k, 0], 1.0) for k in range(3)]
  np.testing.assert_allclose(sigmas, [0.87, 0.97, 1.29], atol=0.005)
  # Round trip through Gaussian errors: the fraction within epsilon of draws with that sigma.
  rng = np.random.default_rng(0)
  errors = rng.normal(0, sigmas[1], (200_000, 2))
  assert np.mean(np.hypot(*errors.T) <= 1.0) == pytest.approx(network[1, 0], abs=0.005)


def _replicate_aucs(rng, n, sigma, ranked, replicates=300):
  """AUCs of a one-detection-per-frame detector over independent sets of n frames."""
  aucs = []
  truth = np.zeros((n, 1, 2))
  present = np.ones((n, 1), bool)
  for _ in range(replicates):
    xy = rng.normal(0, sigma, (n, 2))
    score = -np.hypot(*xy.T) if ranked else rng.random(n)
    dets = [np.array([[x, y, s]]) for (x, y), s in zip(xy, score, strict=True)]
    aucs.append(metrics.auc(dets, truth, present, 1.0))
  return np.asarray(aucs)


def test_auc_standard_error_matches_the_spread_of_replicates():
  rng = np.random.default_rng(1)
  n = 100
  # Perfect ranking: the AUC is the fraction found, a binomial proportion.
  aucs = _replicate_aucs(rng, n, 0.97, ranked=True)
  predicted = reproduction_rows.auc_standard_error(aucs.mean(), n)
  # The sample sd of 300 replicates is within ~4% (1 sd) of the truth; allow 15%.
  assert np.std(aucs) == pytest.approx(predicted, rel=0.15)
  # Random ranking (AUC ~ p^2): still the right scale, within a factor 2.
  aucs = _replicate_aucs(rng, n, 0.97, ranked=False)
  ratio = np.std(aucs) / reproduction_rows.auc_standard_error(aucs.mean(), n)
  assert 0.5 < ratio < 2.0


def _synthetic_results(trackpy_auc, diffusion):
  levels = ((8.0, 8.0 / 15),)
  grid = reproduction.Grid("paper", levels, tuple(diffusion), (1.0, 2.0, 3.0), 2000, 100, 0)
  auc = np.asarray(trackpy_auc, np.float64)[None]
  truths = np.full(auc.shape[:2], 2000.0)
  record = {"seconds": 0.0}
  return reproduction.Results(grid, {"trackpy": auc}, {"trackpy": truths}, {"trackpy": record})


def test_fit_rows_recovers_the_regimes_of_a_synthetic_map():
  study = np.asarray(STUDY["TrackPy"])
  # AUC falls with D and passes the study's D1, D2, D3 rows at D = 1, 3 and 10.
  table = [study[0] + 0.1, study[0], study[1], study[2], np.clip(study[2] - 0.1, 0, 1)]
  results = _synthetic_results(table, (0.3, 1.0, 3.0, 10.0, 30.0))
  (fit,) = reproduction_rows.fit_rows(results, ratio=10.0)
  np.testing.assert_allclose(fit.regimes, (1.0, 3.0, 10.0), rtol=0.03)
  assert fit.max_abs_gap < 0.01 and fit.ratio == pytest.approx(10.0, rel=0.03)
  _, match = reproduction_rows.row_gaps(results, "trackpy", "TrackPy")
  assert match[0, 1, 0] and match[0, 2, 1] and match[0, 3, 2]
  assert not match[0, 0, 0] and not match[0, 1, 2]
  # Move the D3 row to D = 3.5: a 10x ratio no longer fits; a free D3 still does.
  steep = [
    np.clip(study[0] + 0.4, 0, 1),
    study[0],
    study[1],
    study[2],
    np.clip(study[2] - 0.4, 0, 1),
  ]
  results = _synthetic_results(steep, (0.3, 1.0, 2.0, 3.5, 30.0))
  (fixed,) = reproduction_rows.fit_rows(results, ratio=10.0)
  (free,) = reproduction_rows.fit_rows(results, ratio=None)
  assert fixed.max_abs_gap > 0.08  # about 0.12 by hand (linear in log D)
  assert free.max_abs_gap < 0.01
  np.testing.assert_allclose(free.regimes, (1.0, 2.0, 3.5), rtol=0.03)


def _brightest_pixel(images):
  """A plain localiser: the brightest pixel, scored by its value (ties: the first)."""
  out = []
  for image in images:
    row, col = np.unravel_index(np.argmax(image), image.shape)
    out.append(np.array([[col, row, image[row, col]]], np.float64))
  return out


def test_a_cell_matches_an_independent_metrics_computation():
  grid = reproduction.make_grid(
    _config(peak_photons=(8.0,), diffusion=(0.5, 5.0), test_frames=40, validation_frames=40)
  )
  record = reproduction.measure(grid, "model", _brightest_pixel, progress=False)
  assert [(c["level"], c["d"]) for c in record["cells"]] == [(0, 0), (0, 1)]
  cell = record["cells"][1]
  # Redraw the cell from the documented recipe: the preset at (N, N/15, D), test seed
  # 100 * seed + 90, and score it with qdjax.evaluation.metrics directly.
  background = grid.levels[0][1]
  assert background == pytest.approx(8.0 / 15, abs=1e-4)
  params = presets.get("paper").sim_params(
    diffusion=5.0, peak_photons=8.0, background_photons=background
  )
  frames = data.generate(params, 40, 90)
  found = _brightest_pixel(frames["images"])
  expected = [metrics.auc(found, frames["keypoints"], frames["present"], e) for e in (1, 2, 3)]
  np.testing.assert_allclose(cell["auc"], expected, atol=1e-4)
  assert cell["ground_truths"] == int(frames["present"].sum())
  assert cell["peak_photons"] == 8.0 and cell["diffusion_um2_s"] == 5.0
  # The blur floor scores the same locator on the noise-free images of the same frames.
  floor = reproduction.measure(grid, "blur_floor", _brightest_pixel, progress=False)
  expected = metrics.auc(
    _brightest_pixel(frames["expected"]), frames["keypoints"], frames["present"], 1.0
  )
  assert floor["cells"][1]["auc"][0] == pytest.approx(expected, abs=1e-4)


def test_reproduction_end_to_end_tiny(script, tmp_path):
  out = tmp_path / "map"
  tiny = [
    "--config.peak_photons=(8.0,)",
    "--config.preset_level=False",
    "--config.diffusion=(0.5,5.0)",
    "--config.test_frames=16",
    "--config.validation_frames=16",
    "--config.trackpy_diameters=(9,)",
  ]
  result = script("reproduction.py", "--methods=trackpy", f"--output_dir={out}", *tiny)
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((out / "trackpy.json").read_text())
  assert len(record["cells"]) == 2 and record["grid"]["levels"] == [[8.0, 0.5333]]
  for cell in record["cells"]:
    assert cell["trackpy_settings"]["diameter"] == 9
    assert 0 <= cell["auc"][0] <= cell["auc"][1] <= cell["auc"][2] <= 1
  assert (out / "reproduction.png").stat().st_size > 1000
  assert "Best D1/D2/D3" in (out / "summary.md").read_text()
  # Redraw only, on another grid: the saved trackpy cells do not belong to it.
  result = script("reproduction.py", "--methods=", f"--output_dir={out}", *tiny[:-4])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "skipped" in result.stdout and "trackpy.json" in result.stdout
  assert not list(out.glob(".*tmp*"))


@pytest.mark.parametrize(
  "args, needle",
  BAD_METHODS
  + [
    (["--methods=blur_floor"], "blur_floor_workdir"),
    (["--methods=trackpy", "--config.diffusion=(-1.0,)"], "diffusion"),
  ],
)
def test_reproduction_bad_input_is_one_line(script, tmp_path, args, needle):
  result = script("reproduction.py", f"--output_dir={tmp_path / 'map'}", *args)
  assert_one_line_error(result, needle)


def _config(**changes):
  import importlib.util
  from pathlib import Path

  path = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "reproduction.py"
  spec = importlib.util.spec_from_file_location("reproduction_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.preset_level = changes.pop("preset_level", False)
  config.update(changes)
  return config
