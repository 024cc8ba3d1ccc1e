"""Settings of experiments/simulate.py: a preset and optional overrides of its values.

Override any SPEC-named value, e.g. ``--config.overrides.peak_photons=5``. Unset (None)
overrides keep the preset's value.
"""

from ml_collections import config_dict


def get_config():
  config = config_dict.ConfigDict()
  config.preset = "paper"  # named parameter set (qdjax.presets)
  overrides = config_dict.ConfigDict()
  overrides.height = config_dict.placeholder(int)  # frame rows, px
  overrides.width = config_dict.placeholder(int)  # frame columns, px
  overrides.pixel_size_um = config_dict.placeholder(float)  # pixel size a, um
  overrides.dwell_s = config_dict.placeholder(float)  # pixel dwell, s
  overrides.retrace_s = config_dict.placeholder(float)  # line retrace, s
  overrides.substeps = config_dict.placeholder(int)  # samples per dwell K
  overrides.sigma_xy_um = config_dict.placeholder(float)  # lateral PSF sd, um
  overrides.sigma_z_um = config_dict.placeholder(float)  # axial PSF sd, um
  overrides.peak_photons = config_dict.placeholder(float)  # N, photons per dwell at focus
  overrides.background_photons = config_dict.placeholder(float)  # B, photons per pixel
  overrides.margin_px = config_dict.placeholder(float)  # start margin, px
  overrides.z_range_um = config_dict.placeholder(float)  # start z in [-z, z], um
  overrides.min_particles = config_dict.placeholder(int)  # fewest QDs per frame
  overrides.max_particles = config_dict.placeholder(int)  # most QDs per frame
  config.overrides = overrides
  return config
