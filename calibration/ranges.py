"""The measured activation ranges of one graph, in a form another export of the same model can use.

ONNX Runtime's calibration cache names tensors ("conv2d_8", "cat_6"). Those names come from the torch
exporter's counters and are not stable between two exports of the same model at two frame sizes
(a size-dependent shape op shifts the count), and a quantized graph no longer has the same node
sequence (the quantizer folds a Relu into the range of the convolution before it). So the ranges
a calibration keeps (OUT/ranges/<graph>.json) are listed per quantizable node of the float graph,
in graph order, with the node's op type and module path (pkg.torch.onnx.name_scopes): the two
exports run the same modules in the same order, so node i of one is node i of the other, and that
is checked. The values are ONNX Runtime's own TensorData records, untouched.

    {"format": "swiftvr-ranges", "version": 1, "calibration_method": ..., "smooth_quant": false,
     "nodes": [{"name": "node_Conv_12", "op": "Conv", "scopes": [...],
                "inputs": [TensorData | null, ...], "outputs": [TensorData | null, ...]}, ...]}
"""
import json
from pathlib import Path

import onnx

from .layers import GLUE_OPS, OP_TYPES, name_scopes
from .video import CalibrationError

FORMAT = "swiftvr-ranges"


def paired_ops(role: str) -> tuple[str, ...]:
    """The op types whose ranges are kept and paired, for a graph of `role`: the ones calibration can
    quantize there. The DiT's glue ops stay float (calibration/layers.py), and some of its Adds are
    the size-dependent index arithmetic of the window tables (a 1080p DiT graph has Adds that a
    256x144 one has not): pairing them would refuse two exports of the same modules."""
    return OP_TYPES if role == "dit" else OP_TYPES + GLUE_OPS


def quantizable(model: onnx.ModelProto, role: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in paired_ops(role)]


def write_ranges(ort_cache: Path, float_model: onnx.ModelProto, role: str, path: Path) -> None:
    """ONNX Runtime's cache for `float_model` (a graph of `role`) -> the per-node form, at `path`."""
    cache = json.loads(ort_cache.read_text())
    data = cache["data"]
    nodes = [{"name": n.name, "op": n.op_type, "scopes": name_scopes(n),
              "inputs": [data.get(t) for t in n.input], "outputs": [data.get(t) for t in n.output]}
             for n in quantizable(float_model, role)]
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "calibration_method": cache["calibration_method"],
                                "smooth_quant": cache.get("smooth_quant", False), "nodes": nodes}))


def read_ranges(path: Path) -> dict:
    ranges = json.loads(Path(path).read_text())
    if ranges.get("format") != FORMAT or ranges.get("version") != 1:
        raise CalibrationError(f"{path}: not a {FORMAT} v1 file")
    return ranges


def ort_cache_for(ranges: dict, target: onnx.ModelProto, role: str, where: str, path: Path) -> dict[str, str]:
    """Write ONNX Runtime's cache for `target` (another export of the same model, a graph of `role`)
    at `path`. Returns {source node name: target node name}; a CalibrationError where the graphs
    differ. (Ranges files written before paired_ops list the DiT's glue ops too: they are skipped.)"""
    mine = quantizable(target, role)
    ranges = {**ranges, "nodes": [t for t in ranges["nodes"] if t["op"] in paired_ops(role)]}
    for i, (theirs, n) in enumerate(zip(ranges["nodes"], mine)):
        if (theirs["op"], theirs["scopes"], len(theirs["inputs"]), len(theirs["outputs"])) != \
                (n.op_type, name_scopes(n), len(n.input), len(n.output)):
            raise CalibrationError(f"{where}: quantizable node {i} differs ({theirs['op']} in "
                                   f"{'/'.join(theirs['scopes']) or '?'} vs {n.op_type} in "
                                   f"{'/'.join(name_scopes(n)) or '?'}): the graphs are not the same modules")
    if len(ranges["nodes"]) != len(mine):
        raise CalibrationError(f"{where}: {len(ranges['nodes'])} vs {len(mine)} quantizable nodes: the graphs are "
                               f"not the same modules")
    data = {}
    for theirs, n in zip(ranges["nodes"], mine):
        for names, values in ((n.input, theirs["inputs"]), (n.output, theirs["outputs"])):
            data.update({t: v for t, v in zip(names, values) if v is not None})
    path.write_text(json.dumps({"CLS": "TensorsData", "data": data, "calibration_method": ranges["calibration_method"],
                                "smooth_quant": ranges["smooth_quant"]}))
    return {theirs["name"]: n.name for theirs, n in zip(ranges["nodes"], mine)}
