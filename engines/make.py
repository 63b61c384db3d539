"""`make engine`: checkpoint (or the tiny preset) -> ONNX export -> one bundle, in one command.

    python -m engines.make --res 1080p --gpu rtx5090 [--vram GB] [--scale 4 | --input WxH] [--precision bf16]
                           [--checkpoint DIR] [--dit-parts N] [--dit-shapes dynamic|static]
                           [--reae-slice N] [--out engines/1080p.plan]
    python -m engines.make --res 360p --gpu rtx5090 --precision fp8 --calib clip.mp4   (or cpu + int8)
    python -m engines.make --res 1080p --gpu rtx5090 --precision fp8 --calib clip.mp4 --calib-res 360p

The export lands in `exports/<resolution>-<precision>-<key>/`, where the key hashes every input of
the export (weights' content hash, sizes, chunk protocol, precision, parts): an unchanged request
reuses it, and the engine build cache does the same per engine, so a repeated `make engine` costs
only the hashing. --precision fp8|int8 exports in the profile's float precision, then quantizes
with python -m calibration from the --calib clips into `exports/<...>-<fp8|int8>-<key>/` (the key
adds the clips' sha256), reused the same way. With --calib-res the calibration runs on an export at that
size and its ranges are applied to the --res export (calibration/apply.py). Without --checkpoint the tiny preset with seeded random weights is built, and
the command says so: such a bundle exercises every code path but restores nothing.
"""
import argparse
import hashlib
import json
from pathlib import Path
import sys

from contract.sizes import parse_size, resolution_name

from contract.graphs import QUANTIZATIONS

from .profiles import check_quantization, get_profile, memory_budget

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = ROOT / "exports"
RANDOM_SEED = 0
# Blocks per DiT part for the 5B model: TensorRT-RTX needs ~0.7 GiB of host memory per block to
# build (docs/benchmarks.md), so 10-block parts build in ~7 GiB, well inside a 24 GiB machine.
BLOCKS_PER_PART = 10


def export_key(weights: str, args, precision: str, parts: int) -> str:
    request = {"weights": weights, "res": list(parse_size(args.res)), "scale": args.scale, "input": args.input,
               "clip_len": args.clip_len, "dit_overlap": args.dit_overlap, "precision": precision, "parts": parts,
               "dit_shapes": args.dit_shapes}
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:12]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.make", description=__doc__.split("\n\n")[0])
    p.add_argument("--res", default="360p", help="output size: a name (360p ... 2160p) or WxH")
    size_in = p.add_mutually_exclusive_group()
    size_in.add_argument("--scale", type=float, help="input = output / scale (default 4)")
    size_in.add_argument("--input", metavar="WxH", help="input frame size instead of --scale")
    p.add_argument("--gpu", default="rtx5090", help="GPU profile (python -m engines --help lists them)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "fp8", "int8"],
                   help="default: the GPU profile's; fp8 (GPUs of SM 89/90/120) and int8 (cpu) need --calib")
    p.add_argument("--calib", nargs="+", metavar="CLIP", help="calibration video(s) for --precision fp8|int8")
    p.add_argument("--calib-res", metavar="RES", help="--precision fp8|int8: calibrate an export of this output size "
                   "(same model, --scale and chunking) and apply its ranges at --res: a 1080p 5B calibration in "
                   "float32 on a CPU is out of reach, a 360p one is not")
    p.add_argument("--min-psnr", type=float, default=40.0, help="--precision fp8|int8: quantize a layer group if, "
                   "alone, it keeps this PSNR in dB (default %(default)s; lower trades quality for speed)")
    p.add_argument("--groups", nargs="+", metavar="GROUP", help="--precision fp8|int8: quantize these layer groups "
                   "regardless of --min-psnr (python -m calibration --help lists them)")
    p.add_argument("--checkpoint", help="release checkpoint folder (default: tiny preset, random weights)")
    p.add_argument("--preset", choices=["tiny", "5b"], default="tiny",
                   help="without --checkpoint: model shapes, with seeded random weights (default tiny)")
    p.add_argument("--clip-len", type=int, default=24)
    p.add_argument("--dit-overlap", type=int, default=0)
    p.add_argument("--dit-parts", type=int, help=f"DiT engines chained (default: 1 for tiny, "
                                                 f"{BLOCKS_PER_PART} blocks per part for 5b)")
    p.add_argument("--dit-shapes", choices=["dynamic", "static"], default="dynamic",
                   help="dynamic (default): one DiT engine set for every latent-frame count, the weights once; "
                        "static: one shape-specialised set per count (the weights once per count)")
    p.add_argument("--reae-slice", type=int, metavar="LATENTS", help="latent frames per ReAE call (python -m engines "
                   "--help); 0: whole chunks; default: 1 for cpu, what fits for a GPU")
    p.add_argument("--vram", type=float, metavar="GB", help="GPU memory to plan for (python -m engines --help); "
                   "default: the --gpu profile's card")
    p.add_argument("--out", help="bundle file (default engines/<res>.plan)")
    p.add_argument("--exports", default=str(EXPORTS), help="where exports are kept (default %(default)s)")
    p.add_argument("--cache", help="engine build cache (default engines/.cache)")
    p.add_argument("--force", action="store_true", help="rebuild the export and every engine")
    args = p.parse_args(argv)

    try:
        profile = get_profile(args.gpu)
        precision = args.precision or profile.default_precision
        quantization = None
        if precision in QUANTIZATIONS:      # refused before anything is exported
            check_quantization(profile, precision)
            if not args.calib:
                raise ValueError(f"--precision {precision} needs calibration video: --calib CLIP [CLIP ...] "
                                 f"(make engine ... CALIB=clip.mp4)")
            from calibration.layers import CANDIDATES
            unknown = sorted(set(args.groups or []) - set(CANDIDATES))
            if unknown:
                raise ValueError(f"unknown layer groups {unknown}; the groups are {', '.join(CANDIDATES)}")
            quantization, precision = precision, profile.default_precision
            if args.calib_res:
                parse_size(args.calib_res)
                if args.input:
                    raise ValueError("--calib-res keeps the input/output --scale: give --scale, not --input")
        elif args.calib or args.groups or args.min_psnr != 40.0 or args.calib_res:
            raise ValueError("--calib, --calib-res, --min-psnr and --groups are for --precision fp8 or int8")
        parse_size(args.res)
        memory_budget(profile, args.vram)      # a --vram the profile cannot take, before anything is exported
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.checkpoint:
        from swiftvr.checkpoint import CheckpointError, checkpoint_sha256
        from swiftvr.config import DiTConfig
        try:
            print(f"hashing {args.checkpoint} ...", flush=True)
            weights = checkpoint_sha256(args.checkpoint)
            layers = DiTConfig.from_json(Path(args.checkpoint) / "transformer" / "config.json").num_layers
        except (CheckpointError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        source = {"checkpoint": args.checkpoint}
    else:
        from swiftvr.config import get_preset
        print(f"no checkpoint given: building the {args.preset} preset with seeded random weights (seed "
              f"{RANDOM_SEED}). It runs every code path but restores nothing; pass CKPT=DIR for the release model.")
        weights, layers = f"random:{args.preset}:{RANDOM_SEED}", get_preset(args.preset).dit.num_layers
        source = {"preset": args.preset, "seed": RANDOM_SEED}
    parts = args.dit_parts or -(-layers // BLOCKS_PER_PART)

    def export_at(res: str) -> Path | None:
        """The export of this model at output size `res` (made, or reused); None if it failed."""
        request = argparse.Namespace(**{**vars(args), "res": res})
        key = export_key(weights, request, precision, parts)
        folder = Path(args.exports) / f"{resolution_name(parse_size(res))}-{precision}-{key}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        if args.force or not (folder / "export.json").exists():
            from export import export_model
            from export.settings import ExportError
            try:
                report = export_model(folder, res, **source, scale=args.scale, input_size=args.input,
                                      precision=precision, clip_len=args.clip_len, dit_overlap=args.dit_overlap,
                                      dit_parts=parts, overwrite=True, dit_shapes=args.dit_shapes)
            except ExportError as e:
                print(f"error: {e}", file=sys.stderr)
                return None
            print(report.summary())
        else:
            print(f"reusing export {folder} (same weights and settings)")
        return folder

    export_dir = export_at(args.res)
    if export_dir is None:
        return 2

    if quantization:
        from calibration.calibrate import calibrate
        from calibration.quantize import scheme_record
        from calibration.video import CalibrationError
        from contract.files import sha256_file
        try:
            hashes = [sha256_file(c) for c in args.calib]
        except OSError as e:
            print(f"error: calibration video: {e}", file=sys.stderr)
            return 2
        # Everything that decides the quantized graphs: a changed scheme or rule is a new folder.
        choice = {"scheme": scheme_record(quantization), "min_psnr": args.min_psnr, "groups": sorted(args.groups or [])}
        calib_dir = export_dir
        if args.calib_res and parse_size(args.calib_res) != parse_size(args.res):
            calib_dir = export_at(args.calib_res)
            if calib_dir is None:
                return 2
        calib_key = hashlib.sha256(json.dumps([calib_dir.name, quantization, hashes, choice],
                                              sort_keys=True).encode()).hexdigest()[:12]
        quantized_dir = calib_dir.with_name(f"{calib_dir.name}-{quantization}-{calib_key}")
        if args.force or not (quantized_dir / "export.json").exists():
            try:
                calibrate(calib_dir, args.calib, quantization, quantized_dir, overwrite=True,
                          min_psnr=args.min_psnr, groups=args.groups)
            except CalibrationError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        else:
            print(f"reusing quantized export {quantized_dir} (same export and calibration clips)")
        if calib_dir != export_dir:
            from calibration.apply import apply_calibration
            applied_dir = export_dir.with_name(f"{export_dir.name}-{quantized_dir.name}")
            if args.force or not (applied_dir / "export.json").exists():
                try:
                    apply_calibration(quantized_dir, export_dir, applied_dir, overwrite=True)
                except CalibrationError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 2
            else:
                print(f"reusing quantized export {applied_dir} (ranges from {quantized_dir})")
            quantized_dir = applied_dir
        export_dir = quantized_dir

    from .__main__ import main as engines_main
    engines_argv = ["--export", str(export_dir), "--gpu", profile.name, "--precision", precision]
    engines_argv += ["--out", args.out] if args.out else []
    engines_argv += ["--reae-slice", str(args.reae_slice)] if args.reae_slice is not None else []
    engines_argv += ["--vram", str(args.vram)] if args.vram else []
    engines_argv += ["--force"] if args.force else []
    engines_argv += ["--cache", args.cache] if args.cache else []
    return engines_main(engines_argv)


if __name__ == "__main__":
    sys.exit(main())
