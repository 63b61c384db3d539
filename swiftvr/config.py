"""Model configurations: the release's `transformer/config.json` fields and the presets."""
from dataclasses import dataclass, asdict, fields
import json
from pathlib import Path

# Precision names, as every command line takes them -> dtype names (torch.<name>; numpy / ONNX alike).
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class DiTConfig:
    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    in_channels: int = 48
    out_channels: int = 48
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 14336
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024
    self_attn_window_hw: tuple[int, int] = (16, 16)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, raw: dict) -> "DiTConfig":
        """Reads a diffusers-style config; fields we do not model must be the release's values."""
        unsupported = {"image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None}
        for key, expected in unsupported.items():
            if raw.get(key, expected) != expected:
                raise ValueError(f"transformer config: {key}={raw[key]!r} is not supported (SwiftVR uses {expected!r})")
        if raw.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
            raise ValueError(f"transformer config: qk_norm={raw['qk_norm']!r} is not supported")
        if not raw.get("cross_attn_norm", True):
            raise ValueError("transformer config: cross_attn_norm=false is not supported")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in names}
        for key in ("patch_size", "self_attn_window_hw"):
            if key in values:
                values[key] = tuple(values[key])
        if tuple(values.get("patch_size", (1, 2, 2))) != (1, 2, 2):
            raise ValueError(f"transformer config: patch_size={values['patch_size']} is not supported (expects [1, 2, 2])")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "DiTConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict:
        """diffusers-compatible config.json content."""
        out = asdict(self)
        out.update(_class_name="WanTransformer3DModel", patch_size=list(self.patch_size),
                   self_attn_window_hw=list(self.self_attn_window_hw), image_dim=None,
                   added_kv_proj_dim=None, pos_embed_seq_len=None, enable_swa=True,
                   use_torch_compile=False, compile_mode="default")
        return out


@dataclass(frozen=True)
class Preset:
    name: str
    dit: DiTConfig
    prompt_len: int          # length L of prompt_emb [1, L, text_dim]


PRESETS = {
    # The release: Wan2.2-TI2V-5B shapes with SwiftVR's 16x16-token windows.
    "5b": Preset("5b", DiTConfig(), prompt_len=512),
    # The fixtures' tiny transformer (dit_tiny_config.json) with the full-size ReAE.
    "tiny": Preset("tiny", DiTConfig(num_attention_heads=2, attention_head_dim=64, text_dim=64, ffn_dim=256,
                                     num_layers=3, self_attn_window_hw=(4, 4)), prompt_len=16),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
