"""qdjax: simulate, detect, track and measure diffusing quantum dots in two-photon
raster-scan microscopy.

    import qdjax
    tracks, per_track = qdjax.track("movie.tif", preset="invivo")   # DataFrames

The public functions (``qdjax.api``) are loaded on first use, so ``import qdjax`` is
instant and changes nothing: no plotting backend, no logging, no flags.
"""

__version__ = "0.1.0"

__all__ = [
  "calibrate_pmt",
  "classify_motion",
  "fit_microscope",
  "fit_populations",
  "load_preset",
  "locate",
  "simulate_movie",
  "track",
  "track_many",
]


def __getattr__(name: str):
  if name in __all__:
    from qdjax import api

    return getattr(api, name)
  raise AttributeError(f"module 'qdjax' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), *__all__])
