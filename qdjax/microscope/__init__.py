"""A user's microscope: PMT calibration and the simulator fitted to their frames."""
