"""Loading the release checkpoint layout.

    CKPT/reae.safetensors                 128 ReAE tensors
    CKPT/prompt_embedding.safetensors     prompt_emb [1, L, text_dim]
    CKPT/transformer/config.json          diffusers config (+ SwiftVR's self_attn_window_hw)
    CKPT/transformer/diffusion_pytorch_model.safetensors
        or diffusion_pytorch_model-0000K-of-0000N.safetensors + diffusion_pytorch_model.safetensors.index.json

The transformer is built on the meta device and each tensor is read from the memory-mapped file,
cast, and put in place one at a time: peak memory is the model in the target dtype plus one
tensor, so the 5B model loads in bf16 on a 24 GiB machine.
"""
from dataclasses import dataclass
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from .config import DiTConfig
from .reae import ReAE
from .transformer import SwiftVRTransformer

REAE_FILE = "reae.safetensors"
PROMPT_FILE = "prompt_embedding.safetensors"
TRANSFORMER_DIR = "transformer"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"
# Keys the reference's loader tolerates although the model has no such parameters.
IGNORED_KEYS = ("norm_added_q",)


class CheckpointError(ValueError):
    pass


@dataclass
class SwiftVR:
    """The three pieces of a release checkpoint, ready to run."""
    reae: ReAE
    transformer: SwiftVRTransformer
    prompt_emb: torch.Tensor          # [L, text_dim]
    source: str                       # checkpoint folder, or "random:<preset>:<seed>"


def _describe(names, limit=8) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def index_tensors(files: list[Path], expected: dict[str, tuple], what="model") -> dict[str, Path]:
    """name -> file holding it, for every expected tensor; strict: missing, unexpected (other than
    the ones the reference tolerates) and mis-shaped keys raise one error that names them."""
    found, unexpected, misshaped = {}, [], []
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                if name not in expected:
                    if not any(tag in name for tag in IGNORED_KEYS):
                        unexpected.append(name)
                    continue
                shape = tuple(f.get_slice(name).get_shape())
                if shape != tuple(expected[name]):
                    misshaped.append(f"{name} {list(shape)} (expected {list(expected[name])})")
                    continue
                found[name] = path
    missing = set(expected) - set(found)
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys: {_describe(misshaped)}")
    if problems:
        raise CheckpointError(f"{what} checkpoint {', '.join(str(p) for p in files)} does not match: " + "; ".join(problems))
    return {name: found[name] for name in expected}


def load_into(module: torch.nn.Module, files: list[Path], dtype: torch.dtype, device="cpu", what="model") -> None:
    """Fill `module` (possibly on the meta device) from safetensors files, strictly, one tensor at a time."""
    expected = {name: tuple(p.shape) for name, p in module.state_dict(keep_vars=True).items()}
    index = index_tensors(files, expected, what)
    for path in files:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in (n for n, p in index.items() if p == path):
                _put(module, name, f.get_tensor(name).to(device=device, dtype=dtype))


def _put(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    setattr(owner, attr, torch.nn.Parameter(value, requires_grad=False))


def transformer_files(folder: Path) -> list[Path]:
    index = folder / INDEX_FILE
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / s for s in shards]
    else:
        files = [folder / WEIGHTS_FILE]
    absent = [str(f) for f in files if not f.exists()]
    if absent:
        raise CheckpointError(f"transformer weights not found: {', '.join(absent)}")
    return files


def load_transformer(folder: str | Path, dtype=torch.float32, device="cpu") -> SwiftVRTransformer:
    folder = Path(folder)
    config = folder / "config.json"
    if not config.exists():
        raise CheckpointError(f"{config} not found (a release checkpoint has transformer/config.json)")
    cfg = DiTConfig.from_json(config)
    with torch.device("meta"):
        model = SwiftVRTransformer(cfg)
    load_into(model, transformer_files(folder), dtype, device, what="transformer")
    return model.eval()


def load_reae(path: str | Path, dtype=torch.float32, device="cpu") -> ReAE:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} not found")
    with torch.device("meta"):
        model = ReAE()
    load_into(model, [path], dtype, device, what="ReAE")
    return model.eval()


def load_prompt(path: str | Path, dtype=torch.float32, device="cpu") -> torch.Tensor:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} not found")
    with safe_open(str(path), framework="pt") as f:
        if "prompt_emb" not in f.keys():
            raise CheckpointError(f"{path} has no 'prompt_emb' tensor (keys: {_describe(f.keys())})")
        prompt = f.get_tensor("prompt_emb")
    if prompt.ndim != 3 or prompt.shape[0] != 1:
        raise CheckpointError(f"{path}: prompt_emb must be [1, L, text_dim], got {list(prompt.shape)}")
    return prompt[0].to(device=device, dtype=dtype)


def load_checkpoint(folder: str | Path, dtype=torch.float32, device="cpu") -> SwiftVR:
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} not found")
    transformer = load_transformer(folder / TRANSFORMER_DIR, dtype, device)
    prompt = load_prompt(folder / PROMPT_FILE, dtype, device)
    if prompt.shape[1] != transformer.cfg.text_dim:
        raise CheckpointError(f"prompt_emb width {prompt.shape[1]} != transformer text_dim {transformer.cfg.text_dim}")
    return SwiftVR(load_reae(folder / REAE_FILE, dtype, device), transformer, prompt, str(folder))


def checkpoint_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    files = [folder / REAE_FILE, folder / PROMPT_FILE, folder / TRANSFORMER_DIR / "config.json"]
    return files + transformer_files(folder / TRANSFORMER_DIR)


def checkpoint_sha256(folder: str | Path) -> str:
    """Content hash of every file of a checkpoint (names and bytes), for manifests and caches."""
    digest = hashlib.sha256()
    for path in checkpoint_files(folder):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()
