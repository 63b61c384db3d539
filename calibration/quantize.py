"""Q/DQ insertion and range collection: onnxruntime.quantization's quantize_static, QDQ format.

Why ONNX Runtime's quantizer and not NVIDIA ModelOpt: it is already installed and pinned (ModelOpt's
`[onnx]` extra pins other onnx/onnxruntime versions), it writes plain ONNX QuantizeLinear /
DequantizeLinear pairs that TensorRT and ONNX Runtime both read, and it covers what we need:
INT8 and FLOAT8E4M3FN, per-channel weights, a node list to quantize, and a calibration cache, so the
ranges are measured once per graph and every layer-group trial reuses them.

Settings, per precision (SCHEMES): weights are symmetric INT8/FP8 with one scale per output channel.
FP8 activations are symmetric (zero point 0: what TensorRT's Q/DQ layers take) with histogram
ranges (ONNX Runtime offers only its Distribution method for float8). INT8 is the `cpu` profile's
(ONNX Runtime) precision, so its activations are what ONNX Runtime's CPU kernels run fastest and
keep most accurately: unsigned 8-bit with a zero point (U8S8), MinMax ranges. Measured on this
project's ReAE decoder (docs/benchmarks.md): symmetric S8S8 1.4x faster than fp32 at 33.4 dB,
U8S8 1.8x at 39.1 dB: most activations follow a ReLU, so a symmetric int8 range spends half its
levels on values that never occur, and on AVX2 CPUs without VNNI MLAS's fast integer path is U8S8.

ONNX Runtime's quantizer works on float32 graphs. A bf16 export is widened to float32 for it
(contract/onnxruntime.py widen_bf16) and narrowed back afterwards: every tensor that was bf16 in the export
is bf16 again, and each scale takes the dtype of the tensor it quantizes.
"""
import contextlib
import io
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .layers import GLUE_OPS, OP_TYPES


@dataclass(frozen=True)
class Scheme:
    activation: str          # onnxruntime.quantization.QuantType member names
    weight: str
    symmetric_activations: bool
    method: str              # onnxruntime.quantization.CalibrationMethod member name


SCHEMES = {"int8": Scheme("QUInt8", "QInt8", False, "MinMax"),
           "fp8": Scheme("QFLOAT8E4M3FN", "QFLOAT8E4M3FN", True, "Distribution")}
# The other INT8 schemes python -m calibration.schemes compares on a CPU (symmetric S8S8 is what a
# TensorRT INT8 graph would take; Percentile/Entropy are ORT's histogram range methods).
INT8_SCHEMES = {"u8s8-minmax": SCHEMES["int8"], "s8s8-minmax": Scheme("QInt8", "QInt8", True, "MinMax"),
                "u8s8-percentile": Scheme("QUInt8", "QInt8", False, "Percentile"),
                "u8s8-entropy": Scheme("QUInt8", "QInt8", False, "Entropy")}


def scheme_record(precision: str) -> dict:
    """How the graphs were quantized, for the calibration record."""
    s = SCHEMES[precision]
    return {"activations": s.activation, "weights": s.weight, "calibrate_method": s.method,
            "symmetric_activations": s.symmetric_activations, "symmetric_weights": True, "per_channel_weights": True}


class FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over recorded input feeds. quantize_static
    reads it one call at a time (set_range, "CalibStridedMinMax" 1): its histogram collector (FP8)
    cannot merge one batch of activations of different shapes (the encoder's T varies per chunk)."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.i, self.end = feeds, 0, len(feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.i, self.end = start_index, min(end_index, len(self.feeds))

    def get_next(self):
        if self.i >= self.end:
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def __len__(self):
        return len(self.feeds)

    def __iter__(self):
        return iter(self.feeds)


def working_model(path: Path, work: Path, precision: str) -> Path:
    """The float32 graph ONNX Runtime's quantizer and sessions take: the file itself, or widened."""
    if precision != "bf16":
        return path
    from contract.onnxruntime import widen_bf16
    out = work / path.name
    if not out.exists():
        model = widen_bf16(onnx.load(str(path)))
        onnx.save(model, str(out), save_as_external_data=needs_external_data(model),
                  location=out.name + ".data")
    return out


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether to save `model`'s weights beside it: over 1 GB of them. Counted tensor by tensor, as
    ModelProto.ByteSize() serializes the whole message and fails over protobuf's 2 GB (a widened
    5B DiT part is 5.7 GB)."""
    return sum(t.ByteSize() for t in model.graph.initializer) > 1 << 30


def quantize_graph(src: Path, dst: Path, feeds: list[dict], precision: str | Scheme, nodes: list[str],
                   cache: Path) -> None:
    """Q/DQ around `nodes` of `src`, ranges from `feeds` (measured once, kept in `cache`: one cache
    per graph and scheme). `precision`: int8 | fp8 (its SCHEMES entry), or a Scheme."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    scheme = SCHEMES[precision] if isinstance(precision, str) else precision
    external = sorted({e.value for t in onnx.load(str(src), load_external_data=False).graph.initializer
                       if t.data_location == onnx.TensorProto.EXTERNAL
                       for e in t.external_data if e.key == "location"})
    logging.getLogger().setLevel(logging.ERROR)      # its "consider pre-processing" advice, every call
    # quantize_static writes a shape-inferred copy beside the model it is given (`<name>-inferred.onnx`)
    # and deletes it after. Beside a shared export that is a race: two calibrations of one export (two
    # users, two test workers) write the same file and one reads the other's half-written copy. So it
    # is given the graph and its weight files in a folder of its own, beside `dst`: a symbolic link to
    # the graph, copies of the weight files (onnx refuses external data behind a symbolic or hard
    # link). A copy costs disk for a moment; handing it a ModelProto instead would hold the weights
    # in memory three times over.
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=dst.parent) as private, \
            contextlib.redirect_stdout(io.StringIO()):  # its histogram progress, printed to stdout
        view = Path(private) / src.name
        view.symlink_to(src.resolve())
        for name in external:
            (Path(private) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src.parent / name, Path(private) / name)
        quantize_static(str(view), str(dst), None if cache.exists() else FeedReader(feeds),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(OP_TYPES + GLUE_OPS),
                        per_channel=True, activation_type=QuantType[scheme.activation],
                        weight_type=QuantType[scheme.weight], nodes_to_quantize=nodes, use_external_data_format=bool(external),
                        calibrate_method=CalibrationMethod[scheme.method], calibration_cache_path=str(cache),
                        extra_options={"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True,
                                       "CalibStridedMinMax": 1})


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Conv/MatMul nodes whose inputs come from DequantizeLinear: the layers that run quantized."""
    from_dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in ("Conv", "MatMul", "Gemm") and n.input and n.input[0] in from_dq]


def activation_ranges(model: onnx.ModelProto) -> dict[str, list[float]]:
    """{activation tensor: [lowest, highest] value it keeps} from the scale and zero point of its
    QuantizeLinear (the levels of the zero point's type, e.g. 0..255 for uint8)."""
    inits = {t.name: t for t in model.graph.initializer}
    ranges = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits and len(n.input) > 2 and n.input[2] in inits:
            scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
            zero_point = numpy_helper.to_array(inits[n.input[2]])
            if scale.size != 1:
                continue
            if zero_point.dtype.kind in "iu":
                info = np.iinfo(zero_point.dtype)
                lo, hi = info.min, info.max
            else:                                   # float8 E4M3: +-448, zero point 0
                lo, hi = -448.0, 448.0
            zp = float(zero_point.astype(np.float64))
            ranges[n.input[0]] = [round(float(scale) * (lo - zp), 6), round(float(scale) * (hi - zp), 6)]
    return ranges


def narrow_to_bf16(quantized: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """Undo widen_bf16 on a quantized graph: tensors, casts, constants and I/O that were bf16 in
    `original` are bf16 again; a Q/DQ scale is bf16 where the tensor it quantizes was."""
    bf16, f32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(original)
    was_bf16 = {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.input) +
                list(inferred.graph.output) if v.type.tensor_type.elem_type == bf16}
    was_bf16 |= {t.name for t in original.graph.initializer if t.data_type == bf16}
    casts = {n.name for n in original.graph.node for a in n.attribute if a.name == "to" and a.i == bf16}
    constants = {n.name for n in original.graph.node if n.op_type == "Constant"
                 for a in n.attribute if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == bf16}

    def narrow(t: onnx.TensorProto) -> onnx.TensorProto:
        return _bf16_tensor(numpy_helper.to_array(t), t.name)

    graph = quantized.graph
    for i, t in enumerate(graph.initializer):
        base = t.name.removesuffix("_scale")
        if t.data_type == f32 and (t.name in was_bf16 or (t.name.endswith("_scale") and base in was_bf16)):
            graph.initializer[i].CopyFrom(narrow(t))
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and node.name in casts:
                attr.i = bf16
            if attr.type == onnx.AttributeProto.TENSOR and node.name in constants and attr.t.data_type == f32:
                attr.t.CopyFrom(narrow(attr.t))
    for value in list(graph.input) + list(graph.output):
        if value.name in was_bf16:
            value.type.tensor_type.elem_type = bf16
    # The quantizer's value_info holds float32 (widened) types and its own symbols, and the model's
    # metadata is gone: put back the export's own shapes for the tensors that are still there and its
    # metadata (export/exporter.py's dim symbol). engines/memory.py's activation estimate reads
    # them: without them every inner tensor is unsized and an FP8 DiT part planned 0 bytes of
    # activations. The Q/DQ outputs stay unsized, as TensorRT fuses them into the FP8 layers.
    produced = {o for n in graph.node for o in n.output}
    del graph.value_info[:]
    graph.value_info.extend(v for v in original.graph.value_info if v.name in produced)
    have = {p.key for p in quantized.metadata_props}
    quantized.metadata_props.extend(p for p in original.metadata_props if p.key not in have)
    return quantized


def _bf16_tensor(array: np.ndarray, name: str) -> onnx.TensorProto:
    """float32 -> bf16 with round-to-nearest-even (what torch's .to(bfloat16) does)."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.BFLOAT16, dims=array.shape)
    t.raw_data = rounded.tobytes()
    return t
