"""Recovery of the microscope by ``fit.fit_microscope`` on held-out simulated PMT frames.

Frames of the ``invivo`` geometry (24 x 25 px, PMT of sl2pm's calibration) are simulated
at parameter sets the fit has not seen (not the preset's values, which are only its
start), 1500 frames each, and fitted with the default settings. Reported per set: the
truth, the estimate, its standard error, the relative error and whether it meets the
target (N, B within 15 %, sxy within 10 %, D within 30 %).
"""

from __future__ import annotations

import time

from qdjax.microscope import fit, pmt_calibration
from qdjax.sim import data, presets

TARGETS = {
  "peak_photons": 0.15,
  "background_photons": 0.15,
  "sigma_xy_um": 0.10,
  "diffusion_um2_s": 0.30,
}
HELD_OUT = (
  {"peak_photons": 12.0, "background_photons": 1.5, "sigma_xy_um": 0.22, "diffusion_um2_s": 1.5},
  {"peak_photons": 28.0, "background_photons": 0.7, "sigma_xy_um": 0.18, "diffusion_um2_s": 4.0},
)


def run(repeats: int = 1, quick: bool = False, **fit_options) -> dict:
  """``fit_options`` (e.g. ``num_simulated``, ``steps``) override the fit's defaults."""
  del repeats  # one fit per set: the figure is the error, not a time
  preset = presets.get("invivo")
  num_frames = 300 if quick else 1500
  sets = HELD_OUT[:1] if quick else HELD_OUT
  # quick: a smoke test of the whole path (compilation is most of its time), not a figure;
  # its frames are drawn in one chunk of data.generate's largest program, as a fit's usual
  # few hundred frames are.
  fit_options = {**({"steps": 10, "num_simulated": 64} if quick else {}), **fit_options}
  results = []
  for i, truth in enumerate(sets):
    params = preset.sim_params(**truth)  # every frame at the truth's single D
    frames = data.generate(params, num_frames, seed=1000 + i)["images"]
    pmt = {k: float(getattr(params, k)) for k in pmt_calibration.PMT_KEYS.values()}
    start = time.perf_counter()
    result = fit.fit_microscope(
      frames,
      preset.sim_params(regime=2),
      fit.Detector(pmt),
      **fit_options,
      progress=True,
    )
    wall = time.perf_counter() - start
    row = {"truth": truth, "wall_s": round(wall, 1), "j_statistic": result.j_statistic}
    for name, target in TARGETS.items():
      error = result.values[name] / truth[name] - 1
      row[name] = {
        "estimate": round(result.values[name], 4),
        "se": round(result.standard_errors[name], 4),
        "relative_error": round(error, 4),
        "target": target,
        "met": abs(error) <= target,
      }
    results.append(row)
  return {
    "what": "fit_microscope recovery on held-out simulated PMT frames (invivo geometry)",
    "num_frames": num_frames,
    "fit_options": fit_options,
    "sets": results,
    "all_met": all(r[n]["met"] for r in results for n in TARGETS),
  }
