"""Energy as an anomaly score: shilling attacks, detectors and the detection protocol."""
