"""The simulator: raster scan, frames, detector noise (Poisson, PMT), movies, motion populations,
the training prior and the microscope presets.
"""
