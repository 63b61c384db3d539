"""python -m export: SwiftVR (torch) -> ONNX graphs + export.json (docs/export-format.md).

    python -m export --preset tiny --random-weights 0 --res 96x64 --scale 1 --precision fp32 --out exports/tiny
    python -m export --checkpoint checkpoints/SwiftVR --res 1080p --precision bf16 --dit-parts 6 --out exports/1080p

Then `python -m export.verify OUT` checks the graphs against the torch model in ONNX Runtime.
"""
import argparse
import sys

from contract.sizes import RESOLUTIONS

from . import export_model
from .settings import DIT_SHAPES, PRECISIONS, ExportError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, like every other bad request (argparse would add the whole usage)."""
        print(f"error: {message} (see python -m export --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(prog="python -m export", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    weights = parser.add_argument_group("weights (one of)")
    weights.add_argument("--checkpoint", metavar="DIR", help="release checkpoint folder (reae.safetensors, "
                         "prompt_embedding.safetensors, transformer/)")
    weights.add_argument("--preset", choices=["tiny", "5b"], help="model shapes, with --random-weights")
    weights.add_argument("--random-weights", type=int, metavar="SEED", help="seeded random weights for --preset")
    parser.add_argument("--res", required=True, help=f"output size: {', '.join(RESOLUTIONS)} or WxH")
    size_in = parser.add_mutually_exclusive_group()
    size_in.add_argument("--scale", type=float, help="input = output / scale, 1 to 4 (default 4, the reference's)")
    size_in.add_argument("--input", metavar="WxH", help="input frame size instead of --scale")
    parser.add_argument("--clip-len", type=int, default=24, help="frames per chunk, a multiple of 4 (default 24)")
    parser.add_argument("--dit-overlap", type=int, default=0,
                        help="latents of context for middle chunks (default 0, the reference's offline mode)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="bf16",
                        help="float dtype of the graphs (default bf16; TensorRT needs fp16 or bf16)")
    parser.add_argument("--dit-parts", type=int, default=1,
                        help="split the DiT into N consecutive block ranges (one TensorRT build each)")
    parser.add_argument("--dit-shapes", choices=list(DIT_SHAPES), default="dynamic",
                        help="dynamic (default): one DiT graph set for every latent-frame count, the weights "
                             "once; static: one shape-specialised set per count")
    parser.add_argument("--out", required=True, metavar="DIR", help="export folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = export_model(args.out, args.res, checkpoint=args.checkpoint, preset=args.preset,
                              seed=args.random_weights, scale=args.scale, input_size=args.input,
                              precision=args.precision, clip_len=args.clip_len, dit_overlap=args.dit_overlap,
                              dit_parts=args.dit_parts, overwrite=args.overwrite, progress=not args.quiet,
                              dit_shapes=args.dit_shapes)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    print(f"wrote {report.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
