"""From detections to answers: linking, per-track diffusion coefficients, motion types and
populations, tissue motion and background, movie files and their report figures, many
recordings, exports for napari and TrackMate.
"""
