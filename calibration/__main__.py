"""python -m calibration --export DIR --video a.mp4 [b.mp4 ...] --precision fp8|int8 --out DIR_Q
   python -m calibration --export DIR_1080P --ranges-from DIR_Q --out DIR_1080P_Q [--holdout clip.mp4]

The second form applies a calibration made on a smaller export of the same model (calibration/apply.py)."""
import argparse
import signal
import sys

from .calibrate import PRECISIONS, calibrate
from .layers import CANDIDATES
from .quality import format_report
from .video import CalibrationError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration", description=__doc__)
    p.add_argument("--export", required=True, help="unquantized export folder (fp32 or bf16)")
    p.add_argument("--video", nargs="+", help="calibration clip(s)")
    p.add_argument("--ranges-from", metavar="DIR_Q", help="instead of --video: apply this quantized export's layers and "
                   "ranges (calibrated on a smaller export of the same model) to --export")
    p.add_argument("--holdout", nargs="*", help="clip(s) for the quality report (default: the last --video, or "
                                                "the second half of a single one)")
    p.add_argument("--precision", choices=PRECISIONS, help="with --video (--ranges-from: that export's)")
    p.add_argument("--out", required=True, help="quantized export folder to write")
    p.add_argument("--max-frames", type=int, default=None, help="frames read per clip (default all)")
    p.add_argument("--min-psnr", type=float, default=40.0,
                   help="quantize a layer group if, alone, it keeps this PSNR (dB) (default %(default)s)")
    p.add_argument("--groups", nargs="+", help=f"quantize these groups regardless of --min-psnr (the others are not tried): {', '.join(CANDIDATES)}")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    if bool(a.video) == bool(a.ranges_from):
        p.error("give --video CLIP [CLIP ...] to calibrate, or --ranges-from DIR_Q to apply a calibration")
    if a.ranges_from and (a.precision or a.groups or a.min_psnr != 40.0):
        p.error("--precision, --groups and --min-psnr were decided by the calibration --ranges-from names")
    if a.video and not a.precision:
        p.error("--video needs --precision fp8|int8")
    # SIGTERM as an exception: the temporary output folder is then removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if a.ranges_from:
            from .apply import apply_calibration
            record = apply_calibration(a.ranges_from, a.export, a.out, a.holdout, a.max_frames, a.overwrite)
        else:
            record = calibrate(a.export, a.video, a.precision, a.out, a.holdout, a.max_frames, a.min_psnr, a.groups,
                               a.overwrite)
    except CalibrationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(format_report(record["quality"])))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
