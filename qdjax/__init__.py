"""qdjax: simulate, detect and localise diffusing quantum dots in two-photon microscopy."""

__version__ = "0.1.0"
