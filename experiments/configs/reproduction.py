"""Settings of experiments/reproduction.py: the map's grid, methods and test sizes.

The frequent knobs are also plain flags (--methods, --workdir, --blur_floor_workdir,
--output_dir).
"""

from ml_collections import config_dict


def get_config():
  config = config_dict.ConfigDict()
  config.preset = "paper"  # geometry, timing and PSF of every cell (qdjax.sim.presets)
  config.peak_photons = (2.0, 4.0, 8.0, 16.0, 32.0)  # N per dwell; B = N/15 (in vivo ratio)
  config.preset_level = True  # also the preset's own (N, B) as one more level
  config.diffusion = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)  # D, um^2/s, ascending
  config.test_frames = 250  # test frames per cell (AUC standard error <= 0.032)
  config.validation_frames = 100  # validation frames per cell, for tuning trackpy
  config.seed = 0  # user seed of the cells' test and validation frames
  config.methods = "trackpy,mle,model,blur_floor"  # any of trackpy, mle, model, blur_floor
  config.workdir = config_dict.placeholder(str)  # model: a training dir (or a shipped model:)
  config.model = config_dict.placeholder(str)  # shipped model name; None = the default one
  config.blur_floor_workdir = config_dict.placeholder(str)  # detector trained noise-free
  config.output_dir = "results/reproduction"  # <method>.json, summary.md and figures
  config.trackpy_diameters = (5, 7, 9, 11)  # diameters tuned per cell on validation
  config.trackpy_workers = 1  # trackpy processes (1: in this process; the sets are small)
  return config
