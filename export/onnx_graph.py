"""torch module -> a clean ONNX graph for TensorRT, and its description for export.json.

`torch.export` (non-strict) traces the module; `torch.onnx.export` (dynamo, opset 23) translates it,
which turns each 4-D `scaled_dot_product_attention` into one ONNX `Attention` node. Then:

* constants are folded all the way: the exporter's optimizer skips multi-output ops (the Split of
  each block's modulation table) and inputs above 8192 elements (a 5B block's 6x3072 table, the
  ReAE's TGrow weight sums), so we fold those Splits ourselves and re-run the folder without limits;
* the dynamic dimensions get readable names ("T", "T/4", "n", "4n") instead of torch's symbols;
* there must be no control flow (TensorRT cannot build attention inside an `If`).
Graphs whose weights exceed EXTERNAL_DATA_BYTES are written with ONNX external data, `<file>.data`.
"""
import contextlib
import logging
from pathlib import Path
import warnings

import numpy as np
import onnx_ir as ir
import onnxscript.optimizer
import torch

from .settings import OPSET

# Protobuf cannot hold a file over 2 GiB; keep well clear of it, weights and graph together.
EXTERNAL_DATA_BYTES = 1 << 30
CONTROL_FLOW = ("If", "Loop", "Scan")
NUMPY_NAMES = {ir.DataType.FLOAT: "float32", ir.DataType.FLOAT16: "float16", ir.DataType.BFLOAT16: "bfloat16",
               ir.DataType.UINT8: "uint8", ir.DataType.INT64: "int64", ir.DataType.INT32: "int32"}
_NO_LIMIT = 1 << 62


def to_onnx(module: torch.nn.Module, inputs: tuple, input_names: list[str], output_names: list[str],
            dynamic_shapes=None, dim_names: dict[tuple[str, int], str] | None = None) -> ir.Model:
    """The module as an optimised ONNX model (in memory; weights still shared with torch).

    dim_names: {(tensor name, axis): name} for the graph's dynamic dimensions."""
    with _quiet():
        exported = torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes, strict=False)
        program = torch.onnx.export(exported, dynamo=True, opset_version=OPSET, input_names=input_names,
                                    output_names=output_names, optimize=False, verbose=False)
        del exported
        # Every value made from a torch tensor, before optimisation replaces some of them:
        # release_weights() must reach them all (see there).
        torch_initializers = list(program.model.graph.initializers.values())
        program.optimize()                 # what optimize=True would have run
        model = program.model
        model.meta["torch_initializers"] = torch_initializers
        del program
        fold_constant_splits(model)
        onnxscript.optimizer.optimize_ir(model, input_size_limit=_NO_LIMIT, output_size_limit=_NO_LIMIT)
    if dim_names:
        rename_dims(model, dim_names)
    nested = [n.op_type for n in model.graph.all_nodes() if n.op_type in CONTROL_FLOW]
    if nested:
        raise RuntimeError(f"exported graph has control flow {sorted(set(nested))}; TensorRT needs it flat")
    names = ([v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs])
    if names != (list(input_names), list(output_names)):
        raise RuntimeError(f"exported graph I/O {names} != requested {(input_names, output_names)}")
    return model


@contextlib.contextmanager
def _quiet():
    """The exporter's chatter (missing torchvision, skipped folds, deprecations) is not for the user."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def fold_constant_splits(model: ir.Model) -> int:
    """Replaces every Split whose input and sizes are constants by one initializer per output."""
    folded = 0
    for node in list(model.graph):
        if node.op_type != "Split" or node.domain not in ("", "ai.onnx"):
            continue
        data = node.inputs[0].const_value if node.inputs[0] is not None else None
        sizes = node.inputs[1] if len(node.inputs) > 1 else None
        if data is None or (sizes is not None and sizes.const_value is None):
            continue
        array = data.numpy()
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
        if sizes is not None:
            bounds = np.cumsum(sizes.const_value.numpy())[:-1]
        else:
            bounds = np.arange(1, len(node.outputs)) * (array.shape[axis] // len(node.outputs))
        for value, piece in zip(node.outputs, np.split(array, bounds, axis=axis)):
            constant = ir.Value(name=value.name + "_folded", shape=ir.Shape(piece.shape), type=value.type,
                                const_value=ir.tensor(np.ascontiguousarray(piece), name=value.name + "_folded"))
            model.graph.register_initializer(constant)
            value.replace_all_uses_with(constant)
        model.graph.remove(node, safe=True)
        folded += 1
    return folded


def rename_dims(model: ir.Model, dim_names: dict[tuple[str, int], str]) -> None:
    """Renames symbolic dimensions, everywhere they occur, after what they are at the named I/O axes."""
    io = {v.name: v for v in [*model.graph.inputs, *model.graph.outputs]}
    mapping = {}
    for (tensor, axis), name in dim_names.items():
        dim = io[tensor].shape[axis]
        if isinstance(dim, int):
            raise RuntimeError(f"{tensor} axis {axis} came out static ({dim}); expected it dynamic")
        mapping[str(dim)] = name
    values = [*model.graph.inputs, *model.graph.outputs] + [v for n in model.graph.all_nodes() for v in n.outputs]
    for value in values:
        if value.shape is None:
            continue
        dims = [ir.SymbolicDim(mapping[str(d)]) if not isinstance(d, int) and str(d) in mapping else d
                for d in value.shape]
        value.shape = ir.Shape(dims)


def initializer_bytes(model: ir.Model) -> int:
    """Bytes of the weights held in memory (what decides between one file and external data)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def save(model: ir.Model, path: Path) -> list[Path]:
    """Writes the graph; returns the files written (the .onnx, then its external data if any)."""
    if initializer_bytes(model) > EXTERNAL_DATA_BYTES:
        data = path.with_name(path.name + ".data")
        ir.save(model, path, external_data=data.name)
        return [path, data]
    ir.save(model, path)
    return [path]


def release_weights(model: ir.Model) -> None:
    """Drops the in-memory tensors of a model that has been written. onnxscript's module-level
    rewrite rules keep a reference to the last graph they matched, and that graph still knows the
    values optimisation replaced (e.g. each weight before its transpose was folded), so without this a
    DiT part's torch weights (1.5 GB for 5 blocks of 5B) would stay alive for the rest of the export."""
    for value in [*model.graph.initializers.values(), *model.meta.pop("torch_initializers", [])]:
        value.const_value = None


def describe_io(model: ir.Model) -> tuple[list[dict], list[dict]]:
    """export.json's `inputs` and `outputs`: name, shape (ints; strings for dynamic dims), numpy dtype."""
    def entry(value: ir.Value) -> dict:
        shape = [d if isinstance(d, int) else str(d) for d in value.shape]
        return {"name": value.name, "shape": shape, "dtype": NUMPY_NAMES[value.dtype]}
    return [entry(v) for v in model.graph.inputs], [entry(v) for v in model.graph.outputs]
