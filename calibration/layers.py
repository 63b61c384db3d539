"""Layer groups: which Conv/MatMul nodes of which graph belong to which group, from the module
names the torch exporter leaves on every node (metadata `pkg.torch.onnx.name_scopes`).

Candidates (quantized if their measured sensitivity allows it):
  dit.self_attn   self-attention q/k/v/out linears      dit.cross_attn  cross-attention q/out
  dit.ffn         feed-forward linears                  encoder.conv / decoder.conv  ReAE convolutions
Kept in high precision by rule (as NVIDIA ModelOpt's Wan2.2 FP8 recipe does): the DiT patch
embedding, the output head and any other DiT linear (modulation, condition paths), and the first
and last convolution of each ReAE half (pixels in, latents out; latents in, pixels out).
"""
import ast
from collections import defaultdict

import onnx

CANDIDATES = ("dit.self_attn", "dit.cross_attn", "dit.ffn", "encoder.conv", "decoder.conv")
STAGE_OF = {"dit.self_attn": "dit", "dit.cross_attn": "dit", "dit.ffn": "dit",
            "encoder.conv": "encoder", "decoder.conv": "decoder"}
OP_TYPES = ("Conv", "MatMul", "Gemm")
# Between quantized ReAE convolutions: quantized with them, so activations stay 8-bit from one
# convolution to the next instead of going float and back (ONNX Runtime then runs QLinearAdd /
# QLinearConcat and folds the Relu into the convolution's output range). Measured on the decoder
# (INT8 U8S8, docs/benchmarks.md): 1.58x -> 1.91x fp32's speed, and 39.1 -> 39.7 dB. Reshape,
# Slice, Transpose, DepthToSpace and Clip as well changed neither number.
GLUE_OPS = ("Relu", "Add", "Concat", "Resize")


def name_scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return [s for s in ast.literal_eval(prop.value) if s]
            except (ValueError, SyntaxError):
                return []
    return []


def dit_group(scopes: list[str]) -> str:
    text = " ".join(scopes)
    if ".attn1." in text:
        return "dit.self_attn"
    if ".attn2." in text:
        return "dit.cross_attn"
    if ".ffn" in text:
        return "dit.ffn"
    if "patch_embedding" in text:
        return "dit.patch_embedding"
    if "proj_out" in text:
        return "dit.head"
    return "dit.other"


def node_groups(model: onnx.ModelProto, role: str) -> dict[str, list[str]]:
    """{group: [node names]} for every Conv/MatMul of one graph (`role`: encoder, dit, decoder)."""
    nodes = [n for n in model.graph.node if n.op_type in OP_TYPES]
    groups = defaultdict(list)
    if role == "dit":
        for n in nodes:
            groups[dit_group(name_scopes(n))].append(n.name)
        return dict(groups)
    convs = [n for n in nodes if n.op_type == "Conv"]
    for i, n in enumerate(convs):
        edge = i in (0, len(convs) - 1)
        groups[f"{role}.{'edge' if edge else 'conv'}"].append(n.name)
    for n in nodes:
        if n.op_type != "Conv":
            groups[f"{role}.other"].append(n.name)
    return dict(groups)


def glue_nodes(model: onnx.ModelProto, role: str) -> list[str]:
    """The GLUE_OPS nodes of a ReAE graph (none for the DiT: its residual adds stay float)."""
    if role not in ("encoder", "decoder"):
        return []
    return [n.name for n in model.graph.node if n.op_type in GLUE_OPS]


def chosen_nodes(chosen, groups: dict[str, list[str]], glue: list[str]) -> list[str]:
    """The nodes of one graph to quantize for the `chosen` groups: theirs, and the graph's glue ops
    when a convolution group of it is chosen."""
    nodes = [n for g in sorted(chosen) for n in groups.get(g, [])]
    if any(g in groups for g in chosen if g.endswith(".conv")):
        nodes += glue
    return nodes
