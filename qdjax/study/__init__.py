"""The 2023 study: its table, the calibration to its trackpy row, and the reproduction map."""
