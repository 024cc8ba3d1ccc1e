"""Baseline localisers, each a ``qdjax.locator.Locator``: ``images [n, h, w] -> list of n
[k, 3] (x, y, score)``; build them by name with ``qdjax.locator.make``.

- ``trackpy``: ``trackpy.locate`` per frame, mass as the score (the study's method).
- ``mle``: Poisson maximum-likelihood fit of an anisotropic Gaussian spot plus background.

Coordinates follow the spec's convention (docs/spec.md, section 1): the centre of pixel
(row 0, column 0) is (0, 0), x = column.
"""
