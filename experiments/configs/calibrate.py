"""Settings of experiments/calibrate.py: the search that fits the paper preset.

The defaults are the recorded calibration (about 22 minutes on 2 shared CPU cores). A
tiny smoke run: ``--config.peak_photons_grid=3, --config.background_photons_grid=4,
--config.coarse_scale=0.02 --config.fine_scale=0.02 --config.fine_fits=3``.
"""

from ml_collections import config_dict


def get_config():
  config = config_dict.ConfigDict()
  config.preset = "paper"  # preset whose N, B, D1, D2 are fitted (qdjax.sim.presets)
  config.seed = 0  # user seed of the val_d1..3 splits the candidates are scored on
  config.peak_photons_grid = (2.0, 3.0, 4.5, 7.0, 11.0)  # coarse N grid, photons per dwell
  config.background_photons_grid = (1.0, 3.0, 9.0, 25.0)  # coarse B grid, photons per pixel
  config.d1_range = (0.01, 3.0)  # D1 search range, um^2/s (D3 = 10 D1)
  config.coarse_scale = 0.25  # coarse-stage frames per regime, fraction of a val_d* split
  config.coarse_d1_points = 25  # D1 values scored by interpolation per (N, B)
  config.coarse_d2_points = 13  # D2 values in [D1, 10 D1] scored per D1
  config.fine_starts = 2  # best coarse candidates scored as starts (and the spec's first probe)
  config.fine_scale = 1.0  # fine-stage frames per regime, fraction of a val_d* split
  config.fine_fits = 181  # candidates the fine search scores (the recorded run's count)
  config.target = 0.10  # max |gap| to reach; above it margin/z_range/sigma_z are freed
  config.free_extra = True  # allow freeing margin_px, z_range_um, sigma_z_um if needed
  config.free_fits = 102  # candidates the freed search scores (the recorded run's count)
  config.free_min_gain = 0.02  # freed values are kept only if max |gap| falls by this
  config.fit_photons = True  # fit N and B too; False keeps the preset's (measured) values
  config.diameters = (7, 9)  # trackpy diameters tuned at coarse candidates and starts, px
  return config
