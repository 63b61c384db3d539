"""What a bundle needs on the GPU: engines (their weights), activations, I/O buffers; and whether it fits.

The runtime (runtime/backends/tensorrt.py) deserializes every engine at start and gives each one
its own execution context, and a context holds its activation memory for as long as it lives. So
the GPU total is the sum over engines of (engine size + activation memory + I/O buffers at the
profile's largest shapes), not a maximum.

Activation memory is what TensorRT reports for the engine where the builder could deserialize it
(a GPU of the target kind); otherwise it is estimated from the ONNX graph: walk the nodes in
order, keep every intermediate tensor alive from the node that makes it to the last node that reads
it, sized at the profile's largest shapes, and take the peak. TensorRT fuses elementwise chains
into the GEMMs and attention, so the engine's real figure is normally below this estimate.
"""
import json
import math
import re

import onnx

from engines.export_folder import load_graph_proto

DIM_SYMBOL_KEY = "swiftvr.dim_symbol"   # written by export/exporter.py: {"s65": "F"}
# The one dynamic Dim each role is traced with, when a graph predates the metadata above.
ROLE_DIM = {"encoder": "T/4", "decoder": "n", "dit": "F"}
_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
             onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4,
             onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1, onnx.TensorProto.BOOL: 1,
             onnx.TensorProto.FLOAT8E4M3FN: 1}
_EXPRESSION = re.compile(r"^[\w\s*+\-/()]+$")
_FUNCTIONS = {"Max": max, "Min": min, "floor": math.floor, "ceiling": math.ceil, "FloorDiv": lambda a, b: a // b,
              "CeilToInt": math.ceil, "FloorToInt": math.floor}

GIB = 2**30


def _dim_values(model: onnx.ModelProto, role: str, dynamic: dict) -> dict:
    """{name: value at the profile's max} for export.json's dims and the graph's torch symbol."""
    values = {name: r["max"] for name, r in dynamic.items()}
    meta = {p.key: p.value for p in model.metadata_props}
    if DIM_SYMBOL_KEY in meta:
        symbols = json.loads(meta[DIM_SYMBOL_KEY])
    else:
        found = {s for v in model.graph.value_info for d in v.type.tensor_type.shape.dim
                 for s in re.findall(r"\b[su]\d+\b", d.dim_param)}
        symbols = {found.pop(): ROLE_DIM[role]} if len(found) == 1 else {}
    for symbol, name in symbols.items():
        if name in values:
            values[symbol] = values[name]
    return values


def _size(value: onnx.ValueInfoProto, dims: dict) -> int | None:
    """Bytes of a tensor at the max shapes; None when its shape is not known."""
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    n = _ITEMSIZE.get(t.elem_type, 4)
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            n *= d.dim_value
        elif d.dim_param in dims:
            n *= dims[d.dim_param]
        elif _EXPRESSION.match(d.dim_param):
            try:
                n *= int(eval(d.dim_param, {"__builtins__": {}}, {**_FUNCTIONS, **dims}))  # noqa: S307 - arithmetic only
            except Exception:      # noqa: BLE001 - a symbol we cannot size
                return None
        else:
            return None
    return n


def activation_estimate(model: onnx.ModelProto, role: str, dynamic: dict) -> dict:
    """{"peak_bytes", "io_bytes", "unsized"}: the liveness peak of the graph's inner tensors and the
    bytes of its inputs and outputs, at the largest shapes of `dynamic`; `unsized` counts inner
    tensors whose shape could not be evaluated (left out of the peak)."""
    dims = _dim_values(model, role, dynamic)
    graph = model.graph
    io = {v.name: v for v in [*graph.input, *graph.output]}
    constants = {t.name for t in graph.initializer}
    infos = {v.name: v for v in graph.value_info}
    last_use = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = i
    live, current, peak, unsized = {}, 0, 0, 0
    for i, node in enumerate(graph.node):
        if node.op_type != "Constant":
            for name in node.output:
                if not name or name in io or name in constants:
                    continue
                size = _size(infos[name], dims) if name in infos else None
                if size is None:
                    unsized += 1
                    continue
                live[name] = size
                current += size
        peak = max(peak, current)
        for name in [n for n in live if last_use.get(n, -1) <= i]:
            current -= live.pop(name)
    io_bytes = sum(_size(v, dims) or 0 for v in io.values())
    return {"peak_bytes": peak, "io_bytes": io_bytes, "unsized": unsized}


def graph_memory(spec) -> dict:
    """The ONNX side of an engine's memory entry (weights not loaded)."""
    estimate = activation_estimate(load_graph_proto(spec.path), spec.role, spec.dynamic)
    return {"activation_estimate_bytes": estimate["peak_bytes"], "io_bytes": estimate["io_bytes"],
            "unsized_tensors": estimate["unsized"]}


def engine_memory(spec, engine_bytes: int, activation_bytes: int | None) -> dict:
    """A manifest engine's `memory`: engine size (weights included), the builder's activation figure
    (None where it could not be read), the ONNX estimate, I/O buffers at the max shapes."""
    return {"engine_bytes": engine_bytes, "activation_bytes": activation_bytes, **graph_memory(spec)}


def plan_total(entries: list[dict]) -> dict:
    """The GPU total over a bundle's engines' `memory` entries (see the module docstring)."""
    engines = sum(m["engine_bytes"] for m in entries)
    activations = sum(m["activation_bytes"] if m.get("activation_bytes") is not None
                      else m["activation_estimate_bytes"] for m in entries)
    io = sum(m["io_bytes"] for m in entries)
    estimated = any(m.get("activation_bytes") is None for m in entries)
    return {"engines_bytes": engines, "activation_bytes": activations, "io_bytes": io,
            "total_bytes": engines + activations + io, "activation_estimated": estimated}


def fit_problem(total: dict, profile) -> str | None:
    """None when the plan fits the profile's memory budget; else what does not fit and what to change."""
    if profile.memory_budget_gb is None:
        return None
    need, budget = total["total_bytes"] / GIB, profile.memory_budget_gb
    if need <= budget:
        return None
    return (f"the bundle needs {need:.1f} GiB on the GPU (engines {total['engines_bytes'] / GIB:.1f} + activations "
            f"{total['activation_bytes'] / GIB:.1f}{' (estimated)' if total['activation_estimated'] else ''} + I/O "
            f"{total['io_bytes'] / GIB:.1f}) but {_card(profile)} has a budget of "
            f"{budget} GiB: export with --dit-shapes dynamic (one DiT weight copy), a smaller --res or "
            f"--clip-len, or a lower precision, or target a GPU with more memory")


def _card(profile) -> str:
    return f"{profile.name} ({profile.memory_gb} GB)" if profile.memory_gb else profile.name


def describe_plan(total: dict, profile) -> list[str]:
    """engines.inspect's memory plan lines."""
    host = profile is None or profile.memory_budget_gb is None
    lines = [f"memory    engines {total['engines_bytes'] / GIB:.2f} GiB + activations "
             f"{total['activation_bytes'] / GIB:.2f} GiB{' (ONNX estimate, no fusion)' if total['activation_estimated'] else ''}"
             f" + I/O {total['io_bytes'] / GIB:.2f} GiB = {total['total_bytes'] / GIB:.2f} GiB "
             f"{'in host memory' if host else 'on the GPU'}"]
    if host:
        return lines
    problem = fit_problem(total, profile)
    lines.append(f"          {_card(profile)}: budget {profile.memory_budget_gb} GiB: "
                 + (f"WARNING: does not fit: {problem}" if problem else "fits"))
    return lines
