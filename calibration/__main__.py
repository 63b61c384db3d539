"""python -m calibration --export DIR --video a.mp4 [b.mp4 ...] --precision fp8|int8 --out DIR_Q"""
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
    p.add_argument("--video", nargs="+", required=True, help="calibration clip(s)")
    p.add_argument("--holdout", nargs="*", help="clip(s) for the quality report (default: the last --video, or "
                                                "the second half of a single one)")
    p.add_argument("--precision", required=True, choices=PRECISIONS)
    p.add_argument("--out", required=True, help="quantized export folder to write")
    p.add_argument("--max-frames", type=int, default=None, help="frames read per clip (default all)")
    p.add_argument("--min-psnr", type=float, default=40.0,
                   help="quantize a layer group if, alone, it keeps this PSNR (dB) (default %(default)s)")
    p.add_argument("--groups", nargs="+", help=f"quantize these groups regardless: {', '.join(CANDIDATES)}")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    # SIGTERM as an exception: the temporary output folder is then removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
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
