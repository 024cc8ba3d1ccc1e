"""Localisers: the Locator protocol and its implementations (the detector, trackpy, a Poisson MLE),
and localisation of frame files.
"""
