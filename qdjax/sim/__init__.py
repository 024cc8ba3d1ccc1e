"""The simulator: raster scan, frames, detector noise (Poisson, PMT), movies, motion populations,
tissue motion and structured backgrounds, the training prior and the microscope presets.
"""
