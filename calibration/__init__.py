"""Post-training quantization (INT8, FP8) of an export folder from calibration video.

    python -m calibration --export exports/tiny --video a.mp4 [b.mp4 ...] --precision int8 --out exports/tiny-int8

The result is an export folder with the same graph contract (same inputs and outputs; Q/DQ pairs
inside), export.json's `quantization` field, calibration.json: the record of what was measured
and decided (see calibration/calibrate.py), and ranges/: the measured ranges per node
(calibration/ranges.py), which `--ranges-from` applies to another export of the same model
(calibration/apply.py: calibrate at 360p, ship 1080p).

Import what you need from its module (calibration.calibrate.calibrate, calibration.quality, ...):
this package file imports nothing, so engines.inspect can read quality reports without onnx.
"""
