"""python -m engines --export DIR --gpu NAME [--vram GB] [--precision P] [--reae-slice N] [--out FILE] [--cache DIR] [--force]

Builds one bundle (engines/<res>.plan by default, res from the export's output height) for one GPU
profile. Engines come from the build cache when their graph and settings are unchanged. Before
building, the memory plan is fitted to the GPU's budget (engines/fit.py): the ReAE in slices, one
context buffer for every engine (overlap off), DiT weights streamed from host memory, cheapest
first and only where needed; a bundle that cannot fit is refused with the numbers.
"""
import argparse
import sys

from engines.build import BuildError
from contract.bundle import BundleError
from engines.cache import DEFAULT_CACHE_DIR
from engines.make_bundle import make_bundle
from engines.profiles import PROFILES, memory_budget


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True, help="export folder (python -m export ... --out DIR)")
    p.add_argument("--gpu", required=True, help=f"GPU profile: {', '.join(PROFILES)}")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"],
                   help="must match the export's; checked against the GPU profile (default: the export's)")
    p.add_argument("--out", help="bundle file (default engines/<res>.plan, e.g. engines/360p.plan)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE_DIR), help="engine build cache (default %(default)s)")
    p.add_argument("--force", action="store_true", help="rebuild every engine, ignoring the cache")
    p.add_argument("--opt-level", type=int, default=3, choices=range(6),
                   help="TensorRT builder optimization level (default %(default)s)")
    p.add_argument("--reae-slice", type=int, metavar="LATENTS",
                   help="run the ReAE on a chunk in slices of this many latent frames (4 input frames each): its "
                        "activations are then a slice's, not a whole chunk's; 0: whole chunks (default: 1 for cpu; for "
                        "GPUs whole chunks where they fit the budget, else the largest slice that does)")
    p.add_argument("--vram", type=float, metavar="GB",
                   help="plan for this much GPU memory (a card's memory as sold: 8, 12, 16...; default: the profile's "
                        "card); the budget is that less the profile's reserve for the CUDA context and display")
    a = p.parse_args(argv)
    if a.vram is not None and a.gpu in PROFILES:
        try:                # a bad --vram is a usage error, said before anything is read or built
            memory_budget(PROFILES[a.gpu], a.vram)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        make_bundle(a.export, a.gpu, a.precision, a.out, a.cache, a.force, a.opt_level, a.reae_slice, a.vram)
    except (BuildError, BundleError, ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written (finished engines stay in the cache)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
