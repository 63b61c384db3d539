"""Synthetic export folders: small real ONNX graphs in the layout of docs/export-format.md.

They have the export's tensor contract (names, dtypes, dynamic dims, state pairs, DiT parts,
external data, ONNX Attention at opset 23) with random weights and simple math, not SwiftVR's.
Used by the engine tests, and to measure build cost at Wan-5B block sizes:

    python -m engines.synthetic OUT --dim 3072 --heads 24 --ffn 14336 --blocks 2 --window 384 \
        --tokens 15360 --precision bf16
"""
import argparse
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from contract import graphs as c
from swiftvr.config import PRECISION_DTYPES

ONNX_DTYPE = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
LATENT_CHANNELS = 48   # 3 colours x 4 frames x 2 x 2 pixels: the pixel-unshuffle of the encoder
PATCH = 2              # DiT patch (1, 2, 2) over the latent grid -> 48*4 = 192 channels per token


@dataclass
class SyntheticConfig:
    precision: str = "fp16"
    input_size: tuple = (16, 16)   # W_in, H_in; latent grid is half of it
    scale: int = 2
    clip_len: int = 8              # frames per chunk
    dim: int = 64
    heads: int = 2
    ffn: int = 128
    blocks: int = 2
    window: int = 16               # tokens per attention window
    dit_parts: int = 1             # 1: dit.onnx; N: dit.0.onnx -> ... -> dit.<N-1>.onnx, chained by hidden.<block>
    fused_attention: bool = True   # ONNX Attention (opset 23); False: MatMul/Softmax (opset 18)
    external_data: bool = True     # DiT weights in dit*.onnx.data, as real exports over 2 GB do
    seed: int = 0

    @property
    def latent_size(self):
        return self.input_size[0] // 2, self.input_size[1] // 2

    @property
    def latent_frames(self):
        """Latent frames per DiT call: clip_len/4 + 1. The first chunk has clip_len + 4 frames, later
        ones clip_len frames plus dit_overlap = 1 remembered latent, so one fixed-size DiT serves all."""
        return self.clip_len // 4 + 1

    @property
    def tokens(self):
        w, h = self.latent_size
        return self.latent_frames * (h // PATCH) * (w // PATCH)


class _Graph:
    """Tiny helper over onnx.helper: every op returns its (single) output name."""

    def __init__(self, cfg: SyntheticConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.float = ONNX_DTYPE[cfg.precision]
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.count = 0
        self.renamed = {}

    def _name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def input(self, name, dtype, shape):
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, value, name, dtype, shape):
        # Rename the producer's output rather than add an Identity: TensorRT accepts uint8 only on
        # network inputs/outputs, so Cast(to=uint8) must produce the graph output itself.
        producer = next(n for n in self.nodes if value in n.output)
        producer.output[list(producer.output).index(value)] = name
        for n in self.nodes:
            n.input[:] = [name if i == value else i for i in n.input]
        self.renamed[value] = name   # for ops added later
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))

    def ints(self, values):
        name = self._name("shape")
        self.inits.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], list(values)))
        return name

    def floats(self, array, name=None):
        """A float initializer in the graph's precision (bf16 by truncating float32)."""
        name = name or self._name("w")
        a = np.ascontiguousarray(array, dtype=np.float32)
        if self.float == TensorProto.BFLOAT16:
            raw = (a.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        elif self.float == TensorProto.FLOAT16:
            raw = a.astype(np.float16).tobytes()
        else:
            raw = a.tobytes()
        t = helper.make_tensor(name, self.float, a.shape, raw, raw=True)
        self.inits.append(t)
        return name

    def weight(self, fan_in, fan_out):
        return self.floats(self.rng.standard_normal((fan_in, fan_out), dtype=np.float32) / np.sqrt(fan_in))

    def op(self, op_type, *inputs, **attrs):
        out = self._name(op_type.lower())
        inputs = [self.renamed.get(i, i) for i in inputs]
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def save(self, path: Path, name: str, opset: int, external: bool):
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
        onnx.checker.check_model(model)
        if external:
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=0)
        else:
            onnx.save_model(model, str(path))


def _encoder(cfg, rng, path, opset):
    g = _Graph(cfg, rng)
    (w_in, h_in), (w, h) = cfg.input_size, cfg.latent_size
    frames = g.input("frames", TensorProto.UINT8, ["T", h_in, w_in, 3])
    mem0 = g.input("state_in.mem_0", g.float, [1, 1, LATENT_CHANNELS, h, w])
    mem1 = g.input("state_in.mem_1", g.float, [1, 1, 3, h_in, w_in])
    x = g.op("Mul", g.op("Cast", frames, to=g.float), g.floats(np.array(1 / 255)))
    # pixel-unshuffle 4 frames x 2 x 2 pixels x 3 colours -> 48 latent channels
    x7 = g.op("Reshape", x, g.ints([-1, 4, h, 2, w, 2, 3]))
    x = g.op("Reshape", g.op("Transpose", x7, perm=[6, 1, 3, 5, 0, 2, 4]), g.ints([1, LATENT_CHANNELS, -1, h, w]))
    x = g.op("Conv", x, g.floats(rng.standard_normal((48, 48, 1, 1, 1)) / 7))
    x = g.op("Add", x, g.op("Reshape", mem0, g.ints([1, LATENT_CHANNELS, 1, h, w])))
    latents = g.op("Add", x, g.op("ReduceMean", mem1, keepdims=1))
    g.output(latents, "latents", g.float, [1, LATENT_CHANNELS, "T/4", h, w])
    last_latent = g.op("Slice", latents, g.ints([-1]), g.ints([2**62]), g.ints([2]))
    g.output(g.op("Reshape", last_latent, g.ints([1, 1, LATENT_CHANNELS, h, w])),
             "state_out.mem_0", g.float, [1, 1, LATENT_CHANNELS, h, w])
    last_frame = g.op("Slice", x7, g.ints([-1]), g.ints([2**62]), g.ints([0]))   # frames of the last group
    last_frame = g.op("Slice", last_frame, g.ints([3]), g.ints([4]), g.ints([1]))  # its 4th frame
    last_frame = g.op("Transpose", g.op("Reshape", last_frame, g.ints([h, 2, w, 2, 3])), perm=[4, 0, 1, 2, 3])
    g.output(g.op("Reshape", last_frame, g.ints([1, 1, 3, h_in, w_in])),
             "state_out.mem_1", g.float, [1, 1, 3, h_in, w_in])
    g.save(path, "encoder", opset, external=False)


def _decoder(cfg, rng, path, opset):
    g = _Graph(cfg, rng)
    (w, h), r = cfg.latent_size, 2 * cfg.scale
    channels = 3 * 4 * r * r
    latents = g.input("latents", g.float, [1, LATENT_CHANNELS, "n", h, w])
    mem0 = g.input("state_in.mem_0", g.float, [1, 1, LATENT_CHANNELS, h, w])
    z = g.op("Add", latents, g.op("Reshape", mem0, g.ints([1, LATENT_CHANNELS, 1, h, w])))
    z = g.op("Conv", z, g.floats(rng.standard_normal((channels, 48, 1, 1, 1)) / 7))
    # pixel-shuffle back: channels -> 4 frames x r x r pixels x 3 colours
    z = g.op("Transpose", g.op("Reshape", z, g.ints([3, 4, r, r, -1, h, w])), perm=[4, 1, 5, 2, 6, 3, 0])
    z = g.op("Reshape", z, g.ints([-1, h * r, w * r, 3]))
    z = g.op("Clip", g.op("Add", z, g.floats(np.array(0.5))), g.floats(np.array(0.0)), g.floats(np.array(1.0)))
    frames = g.op("Cast", g.op("Mul", z, g.floats(np.array(255.0))), to=TensorProto.UINT8)
    g.output(frames, "frames", TensorProto.UINT8, ["4n", h * r, w * r, 3])
    last = g.op("Slice", latents, g.ints([-1]), g.ints([2**62]), g.ints([2]))
    g.output(g.op("Reshape", last, g.ints([1, 1, LATENT_CHANNELS, h, w])),
             "state_out.mem_0", g.float, [1, 1, LATENT_CHANNELS, h, w])
    g.save(path, "decoder", opset, external=False)


def _block(g: _Graph, x, cfg):
    """Pre-norm transformer block over windows of cfg.window tokens."""
    d, heads, L = cfg.dim, cfg.heads, cfg.tokens
    hd, windows = d // heads, L // cfg.window
    ones, zeros = g.floats(np.ones(d)), g.floats(np.zeros(d))
    h = g.op("LayerNormalization", x, ones, zeros, axis=-1, epsilon=1e-6)

    def heads_of(t):  # [1, L, d] -> [windows, heads, window, hd]
        return g.op("Transpose", g.op("Reshape", t, g.ints([windows, cfg.window, heads, hd])), perm=[0, 2, 1, 3])

    q, k, v = (heads_of(g.op("MatMul", h, g.weight(d, d))) for _ in range(3))
    if cfg.fused_attention:
        a = g.op("Attention", q, k, v)
    else:
        s = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.floats(np.array(hd ** -0.5)))
        a = g.op("MatMul", g.op("Softmax", s, axis=-1), v)
    a = g.op("Reshape", g.op("Transpose", a, perm=[0, 2, 1, 3]), g.ints([1, L, d]))
    x = g.op("Add", x, g.op("MatMul", a, g.weight(d, d)))
    h = g.op("LayerNormalization", x, ones, zeros, axis=-1, epsilon=1e-6)
    f = g.op("MatMul", h, g.weight(d, cfg.ffn))
    f = g.op("Mul", f, g.op("Sigmoid", g.op("Mul", f, g.floats(np.array(1.702)))))  # GELU, sigmoid form
    return g.op("Add", x, g.op("MatMul", f, g.weight(cfg.ffn, d)))


def _dit_part(cfg, rng, path, part, blocks, opset):
    """Part `part` of cfg.dit_parts: (first, end) blocks; first part embeds, last part projects out."""
    g = _Graph(cfg, rng)
    (w, h), F, L, d = cfg.latent_size, cfg.latent_frames, cfg.tokens, cfg.dim
    first, last = part == 0, part == cfg.dit_parts - 1
    latent_shape = [1, LATENT_CHANNELS, F, h, w]
    token_channels = LATENT_CHANNELS * PATCH * PATCH
    grid7 = [1, LATENT_CHANNELS, F, h // PATCH, PATCH, w // PATCH, PATCH]
    if first:
        latents = g.input("latents", g.float, latent_shape)
        t = g.op("Transpose", g.op("Reshape", latents, g.ints(grid7)), perm=[0, 2, 3, 5, 1, 4, 6])
        x = g.op("MatMul", g.op("Reshape", t, g.ints([1, L, token_channels])), g.weight(token_channels, d))
    else:
        x = g.input(c.hidden_name(blocks[0]), g.float, [1, L, d])
    for _ in range(*blocks):
        x = _block(g, x, cfg)
    if not last:
        g.output(x, c.hidden_name(blocks[1]), g.float, [1, L, d])
    else:
        if not first:
            latents = g.input("latents", g.float, latent_shape)
        t = g.op("Reshape", g.op("MatMul", x, g.weight(d, token_channels)),
                 g.ints([1, F, h // PATCH, w // PATCH, LATENT_CHANNELS, PATCH, PATCH]))
        v = g.op("Reshape", g.op("Transpose", t, perm=[0, 4, 1, 2, 5, 3, 6]), g.ints(latent_shape))
        g.output(g.op("Sub", latents, v), "restored", g.float, latent_shape)
    g.save(path, path.stem, opset, external=cfg.external_data)


def _io(graph_path: Path) -> tuple[tuple, tuple]:
    """The graph's inputs and outputs as the contract describes them, read back from the saved file."""
    model = onnx.load(str(graph_path), load_external_data=False)

    def entry(vi):
        t = vi.type.tensor_type
        dtype = str(helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type != TensorProto.BFLOAT16 else "bfloat16"
        return c.Tensor(vi.name, tuple(dim.dim_param if dim.dim_param else dim.dim_value for dim in t.shape.dim),
                        dtype)
    return tuple(entry(v) for v in model.graph.input), tuple(entry(v) for v in model.graph.output)


def write_synthetic_export(out, cfg: SyntheticConfig | None = None) -> Path:
    cfg = cfg or SyntheticConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = cfg.latent_size
    if (h % PATCH or w % PATCH or cfg.tokens % cfg.window or cfg.dim % cfg.heads or cfg.clip_len % 4):
        raise ValueError(f"inconsistent synthetic config: {cfg}")
    if not 1 <= cfg.dit_parts <= cfg.blocks:
        raise ValueError(f"dit_parts must be 1..blocks ({cfg.blocks}): every part holds at least one block")
    rng = np.random.default_rng(cfg.seed)
    opset = 23 if cfg.fused_attention else 18
    _encoder(cfg, rng, out / "encoder.onnx", opset)
    _decoder(cfg, rng, out / "decoder.onnx", opset)
    cuts = np.linspace(0, cfg.blocks, cfg.dit_parts + 1).round().astype(int).tolist()
    names = ["dit.onnx"] if cfg.dit_parts == 1 else [f"dit.{k}.onnx" for k in range(cfg.dit_parts)]
    for k, name in enumerate(names):
        _dit_part(cfg, rng, out / name, k, (cuts[k], cuts[k + 1]), opset)

    n_lat, F = cfg.clip_len // 4, cfg.latent_frames

    def graph(file, role, dynamic, blocks=None):
        inputs, outputs = _io(out / file)
        return c.Graph(file.removesuffix(".onnx"), role, file, inputs, outputs, dynamic,
                       blocks, F if role == "dit" else None)

    # Written through the contract, as the exporter's export.json is: checked before it is written.
    contract = c.make_contract(
        graph("encoder.onnx", "encoder", {"T": {"min": 4, "opt": cfg.clip_len, "max": cfg.clip_len + 4}}),
        {F: [graph(name, "dit", {}, (cuts[k], cuts[k + 1])) for k, name in enumerate(names)]},
        graph("decoder.onnx", "decoder", {"n": {"min": 1, "opt": n_lat, "max": n_lat + 1}}),
        [F], f"synthetic export {out}")
    fields = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "opset": opset,
        "model": {"preset": "synthetic", "checkpoint": None, "checkpoint_sha256": None,
                  "random_weights_seed": cfg.seed, "synthetic_config": asdict(cfg),
                  "transformer_config": {"dim": cfg.dim, "num_heads": cfg.heads, "ffn_dim": cfg.ffn,
                                         "num_layers": cfg.blocks, "window_tokens": cfg.window},
                  "latent_channels": LATENT_CHANNELS},
        "precision": cfg.precision, "dtype": PRECISION_DTYPES[cfg.precision],
        "input_size": list(cfg.input_size),
        "output_size": [cfg.input_size[0] * cfg.scale, cfg.input_size[1] * cfg.scale],
        "padded_size": list(cfg.input_size), "latent_size": [w, h], "scale": float(cfg.scale),
        "chunk": {"clip_len": cfg.clip_len, "dit_overlap": 1, "dit_latent_frames": [F],
                  "encoder_frames": [cfg.clip_len, cfg.clip_len + 4], "decoder_latent_frames": [1, n_lat + 1]},
    }
    c.write_export_json(out, c.export_json(fields, contract))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    d = SyntheticConfig()
    p.add_argument("--precision", default=d.precision, choices=list(ONNX_DTYPE))
    for name in ("dim", "heads", "ffn", "blocks", "window", "dit_parts", "clip_len", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--tokens", type=int, default=None,
                   help="DiT tokens per call (sets the latent grid: clip_len/4 frames of 2x2 patches)")
    p.add_argument("--decomposed-attention", action="store_true", help="MatMul/Softmax at opset 18")
    a = p.parse_args(argv)
    cfg = SyntheticConfig(precision=a.precision, dim=a.dim, heads=a.heads, ffn=a.ffn, blocks=a.blocks,
                          window=a.window, dit_parts=a.dit_parts, clip_len=a.clip_len, seed=a.seed,
                          fused_attention=not a.decomposed_attention)
    if a.tokens:
        # a latent grid with `tokens` DiT tokens: frames x (h/2) x (w/2), w/2 a multiple of 8
        per_frame = a.tokens // cfg.latent_frames
        wp = max(x for x in range(8, per_frame + 1, 8) if per_frame % x == 0 and x * x <= 4 * per_frame)
        cfg.input_size = (4 * wp, 4 * (per_frame // wp))
        assert cfg.tokens == a.tokens, (cfg.tokens, a.tokens)
    write_synthetic_export(a.out, cfg)
    print(f"wrote {a.out}: {cfg}")


if __name__ == "__main__":
    main()
