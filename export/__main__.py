"""python -m export: SwiftVR (torch) -> ONNX graphs + export.json (docs/export-format.md).

    python -m export --preset tiny --random-weights 0 --res 96x64 --scale 1 --precision fp32 --out exports/tiny
    python -m export --checkpoint checkpoints/SwiftVR --res 1080p --precision bf16 --dit-parts 6 --out exports/1080p

Then `python -m export.verify OUT` checks the graphs against the torch model in ONNX Runtime.
"""
import argparse
from pathlib import Path
import sys

from swiftvr.sizes import RESOLUTIONS

from .settings import PRECISIONS, ExportError, check_out_dir, make_settings


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
    parser.add_argument("--out", required=True, metavar="DIR", help="export folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        source = _weight_source(args)
        settings = make_settings(args.res, args.scale, args.input, args.precision, args.clip_len, args.dit_overlap,
                                 args.dit_parts, num_layers=source.cfg.num_layers)
        check_out_dir(Path(args.out), args.overwrite)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .exporter import run_export        # torch.onnx is slow to import: only once the request is good
    g = settings.geometry
    print(f"exporting {source.preset or 'checkpoint'} {g.input_size[0]}x{g.input_size[1]} -> "
          f"{g.output_size[0]}x{g.output_size[1]} (padded {g.padded_size[0]}x{g.padded_size[1]}), "
          f"{settings.precision}, clip_len {settings.clip_len}, DiT latent frames {settings.dit_latent_frames}, "
          f"{settings.dit_parts} DiT part(s)")
    report = run_export(source, settings, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(report.summary())
    print(f"wrote {report.out}")
    return 0


def _weight_source(args):
    from .weights import checkpoint_source, random_source
    if args.checkpoint is not None:
        if args.preset is not None or args.random_weights is not None:
            raise ExportError("--checkpoint takes its shapes and weights from the folder: "
                              "drop --preset/--random-weights")
        return checkpoint_source(args.checkpoint)
    if args.preset is None or args.random_weights is None:
        raise ExportError("give --checkpoint DIR, or --preset NAME with --random-weights SEED")
    return random_source(args.preset, args.random_weights)


if __name__ == "__main__":
    sys.exit(main())
