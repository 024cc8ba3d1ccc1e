"""From detections to answers: linking, per-track diffusion coefficients, motion types and
populations, many recordings, exports for napari and TrackMate.
"""
