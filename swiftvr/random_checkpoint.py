"""Seeded random weights in the release layout, so every shape can run without the real weights.

    python -m swiftvr.random_checkpoint --preset 5b|tiny --out DIR [--seed 0] [--dtype bf16]

The recipe is the fixtures' (fixtures/README.md): ReAE per its seeded recipe; transformer tensors
drawn in state-dict order from one generator, scaled so activations stay in range (modulation
tables 0.1*r, norm weights 1+0.1*r, matrices r/sqrt(fan_in), biases 0.02*r). The weights mean
nothing; they exist to exercise the real code paths and shapes.
"""
import argparse
import json
import math
import os
from pathlib import Path
import shutil

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from .checkpoint import (INDEX_FILE, PROMPT_FILE, REAE_FILE, TRANSFORMER_DIR, WEIGHTS_FILE, SwiftVR)
from .config import PRECISION_DTYPES, Preset, get_preset
from .reae import ReAE, seeded_reae_state_dict
from .transformer import SwiftVRTransformer

DTYPES = {name: getattr(torch, dtype) for name, dtype in PRECISION_DTYPES.items()}
SHARD_BYTES = 5 * 1024**3


def random_tensor(name: str, shape, generator: torch.Generator, device="cpu") -> torch.Tensor:
    r = torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
    if name.endswith("scale_shift_table"):
        return r * 0.1
    if "norm" in name and name.endswith(".weight"):
        return 1 + 0.1 * r
    if len(shape) > 1:
        return r * (1.0 / math.sqrt(math.prod(shape[1:])))
    return r * 0.02


def transformer_shapes(preset: Preset) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in SwiftVRTransformer(preset.dit).state_dict().items()}


def transformer_tensors(preset: Preset, seed: int, dtype=torch.float32, device="cpu"):
    """Yields (name, tensor) in state-dict order; one tensor alive at a time."""
    shapes = transformer_shapes(preset)
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, shape in shapes.items():
        yield name, random_tensor(name, shape, generator, device).to(dtype)


def random_prompt(preset: Preset, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(1, preset.prompt_len, preset.dit.text_dim, generator=generator)


def random_model(preset_name: str, seed: int = 0, dtype=torch.float32, device="cpu") -> SwiftVR:
    """The model with seeded random weights built in memory (directly on `device`), no files."""
    preset = get_preset(preset_name)
    with torch.device("meta"):
        transformer = SwiftVRTransformer(preset.dit)
        reae = ReAE()
    transformer.load_state_dict(dict(transformer_tensors(preset, seed, dtype, device)), assign=True)
    reae.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in seeded_reae_state_dict(seed).items()}, assign=True)
    prompt = random_prompt(preset, seed)[0].to(device=device, dtype=dtype)
    return SwiftVR(reae.eval(), transformer.eval(), prompt, f"random:{preset_name}:{seed}")


def write_random_checkpoint(preset_name: str, out: str | Path, seed: int = 0, dtype=torch.float32,
                            shard_bytes: int = SHARD_BYTES) -> Path:
    """Writes the release layout to `out` (via a temporary folder renamed at the end)."""
    preset = get_preset(preset_name)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / TRANSFORMER_DIR).mkdir(parents=True)
    try:
        save_file(seeded_reae_state_dict(seed), tmp / REAE_FILE)
        save_file({"prompt_emb": random_prompt(preset, seed).to(dtype).contiguous()}, tmp / PROMPT_FILE)
        config = preset.dit.to_dict()
        (tmp / TRANSFORMER_DIR / "config.json").write_text(json.dumps(config, indent=2))
        _write_shards(transformer_tensors(preset, seed, dtype), tmp / TRANSFORMER_DIR, shard_bytes,
                      total=len(transformer_shapes(preset)))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_shards(tensors, folder: Path, shard_bytes: int, total=None) -> None:
    shards, current, size = [], {}, 0
    for name, tensor in tqdm(tensors, desc="transformer tensors", unit="tensor", total=total, leave=False):
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
        if size >= shard_bytes:
            shards.append(current)
            current, size = {}, 0
    if current:
        shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], folder / WEIGHTS_FILE)
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / name)
        weight_map.update({k: name for k in shard})
    total_size = sum(t.numel() * t.element_size() for s in shards for t in s.values())
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["5b", "tiny"], required=True)
    parser.add_argument("--out", required=True, help="folder to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="weights dtype (default: bf16 for 5b, fp32 for tiny)")
    args = parser.parse_args(argv)
    dtype = DTYPES[args.dtype or ("bf16" if args.preset == "5b" else "fp32")]
    path = write_random_checkpoint(args.preset, args.out, args.seed, dtype)
    print(f"wrote random {args.preset} checkpoint (seed {args.seed}, {dtype}) to {path}")


if __name__ == "__main__":
    main()
