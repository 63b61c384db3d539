"""Where an export's weights come from: a release checkpoint folder, or a preset with seeded random weights.

The DiT is never held whole: `transformer_tensors()` yields its tensors one at a time, in
state-dict order, as float32 (a checkpoint's are read per key from the memory-mapped files; random
ones are drawn by `swiftvr.random_checkpoint`'s recipe, which must be drawn in order). The export
keeps only the blocks of the part it is writing, so the 5B model exports in a few GB of memory.
"""
from contextlib import ExitStack
from dataclasses import dataclass
import hashlib
import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from swiftvr.checkpoint import (index_tensors, PROMPT_FILE, REAE_FILE, TRANSFORMER_DIR, CheckpointError, SwiftVR,
                                checkpoint_sha256, load_checkpoint, load_prompt, load_reae, transformer_files)
from swiftvr.config import PRESETS, DiTConfig, Preset, get_preset
from swiftvr.random_checkpoint import random_model, random_prompt, transformer_shapes
from swiftvr import random_checkpoint
from swiftvr.reae import ReAE, seeded_reae_state_dict

from .settings import ExportError

RANDOM_RECIPE = "swiftvr.random_checkpoint (fixtures/README.md recipe)"


@dataclass(frozen=True)
class WeightSource:
    cfg: DiTConfig
    preset: str | None            # the preset name, or the one a checkpoint's config equals (else None)
    checkpoint: Path | None       # release layout folder
    seed: int | None              # random weights seed

    # ---- identity --------------------------------------------------------------------------------
    def sha256(self) -> str:
        """A checkpoint's content hash (every file's name and bytes). For random weights there are no
        bytes to hash: the hash is of the recipe that makes them (preset, seed, config)."""
        if self.checkpoint is not None:
            return checkpoint_sha256(self.checkpoint)
        recipe = {"recipe": RANDOM_RECIPE, "preset": self.preset, "seed": self.seed, "config": self.cfg.to_dict()}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()

    def describe(self) -> dict:
        """export.json's `model` entry."""
        return {"preset": self.preset, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "checkpoint_sha256": self.sha256(),
                "checkpoint_sha256_of": "checkpoint files" if self.checkpoint else "random-weights recipe",
                "random_weights_seed": self.seed, "transformer_config": self.cfg.to_dict(),
                "prompt_len": self.prompt_len(), "latent_channels": 48}

    # ---- the small pieces, whole ------------------------------------------------------------------
    def reae(self) -> ReAE:
        if self.checkpoint is not None:
            return load_reae(self.checkpoint / REAE_FILE)
        model = ReAE()
        model.load_state_dict(seeded_reae_state_dict(self.seed), strict=True)
        return model.eval()

    def prompt(self) -> torch.Tensor:
        """prompt_emb [L, text_dim] float32."""
        if self.checkpoint is not None:
            return load_prompt(self.checkpoint / PROMPT_FILE)
        return random_prompt(get_preset(self.preset), self.seed)[0]

    def prompt_len(self) -> int:
        return self.prompt().shape[0]

    # ---- the DiT, one tensor at a time -------------------------------------------------------------
    def transformer_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, float32 tensor) in state-dict order."""
        if self.checkpoint is None:
            yield from random_checkpoint.transformer_tensors(get_preset(self.preset), self.seed, torch.float32)
            return
        index = _index_transformer(self.checkpoint / TRANSFORMER_DIR, self.cfg)
        with ExitStack() as stack:
            files = {path: stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
                     for path in set(index.values())}
            for name, path in index.items():
                yield name, files[path].get_tensor(name).to(torch.float32)

    # ---- everything at once (verification of small models) -----------------------------------------
    def torch_model(self) -> SwiftVR:
        if self.checkpoint is not None:
            return load_checkpoint(self.checkpoint)
        return random_model(self.preset, self.seed)


def random_source(preset: str, seed: int) -> WeightSource:
    if preset not in PRESETS:
        raise ExportError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return WeightSource(get_preset(preset).dit, preset, None, seed)


def checkpoint_source(folder: str | Path) -> WeightSource:
    """Checks the whole checkpoint (files, config, every key and shape) without loading weights."""
    folder = Path(folder)
    try:
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {folder} not found")
        for name in (REAE_FILE, PROMPT_FILE, f"{TRANSFORMER_DIR}/config.json"):
            if not (folder / name).is_file():
                raise CheckpointError(f"{folder / name} not found (not a SwiftVR release checkpoint)")
        cfg = DiTConfig.from_json(folder / TRANSFORMER_DIR / "config.json")
        _index_transformer(folder / TRANSFORMER_DIR, cfg)
    except (CheckpointError, ValueError, OSError) as e:
        raise ExportError(str(e)) from None
    preset = next((name for name, p in PRESETS.items() if p.dit == cfg), None)
    return WeightSource(cfg, preset, folder.resolve(), None)


def source_from_manifest(model: dict) -> WeightSource:
    """The weights an export.json names (for `export.verify`)."""
    if model.get("checkpoint"):
        return checkpoint_source(model["checkpoint"])
    return random_source(model["preset"], model["random_weights_seed"])


def _index_transformer(folder: Path, cfg: DiTConfig) -> dict[str, Path]:
    """name -> file for every transformer tensor, in state-dict order; strict like `load_into`."""
    expected = transformer_shapes(Preset("checkpoint", cfg, prompt_len=0))
    return index_tensors(transformer_files(folder), expected, what="transformer")
