"""Settings of experiments/calibrate.py for the ``invivo`` preset: N, B and the PMT are
measured (docs/spec.md, section 9), so only D1 and D2 (D3 = 10 D1) are fitted to the study's
TrackPy row at these photon levels.

  python experiments/calibrate.py --config=experiments/configs/calibrate_invivo.py --install
"""

from configs import calibrate


def get_config():
  config = calibrate.get_config()
  config.preset = "invivo"
  config.fit_photons = False  # keep the preset's N and B; fit D1 and D2 only
  config.d1_range = (0.03, 10.0)  # brighter frames need more blur to match: a wider range up
  config.coarse_scale = 0.15  # coarse-stage frames per regime, fraction of a val_d* split
  config.fine_scale = 0.5  # fine-stage frames per regime (333)
  config.fine_fits = 200  # candidates the fine search scores (about 300 s on 2 cores)
  return config
