"""What a bundle needs on the GPU: engines (their weights), activations, I/O buffers; and whether it fits.

The runtime (runtime/backends/tensorrt.py) deserializes every engine at start and gives each one
its own execution context. The contexts' activation memory is the runtime's own, laid out by
contract/context_memory.py (the plan here calls the same function): engines that never run at the
same time share one buffer, the size of the largest need among them. With the stages overlapping
(overlap on) that is one buffer per lane (encoder, all DiT parts, decoder); with overlap off, one
buffer for every engine. So the GPU total is the engines' sizes (less the DiT weights streamed
from host memory, where a bundle streams them) + the context buffers + the engines' I/O buffers at
the profile's largest shapes.

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

from contract.context_memory import context_buffers
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

GIB, MIB = 2**30, 2**20


def size_text(nbytes: int) -> str:
    """"10.72 GiB", or "84.9 MiB" below a tenth of a GiB (tiny bundles)."""
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB / 10 else f"{nbytes / MIB:.1f} MiB"


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


def activation_need(memory: dict) -> int:
    """The activation memory an engine's context needs: TensorRT's figure, else the ONNX estimate; plus
    the weight-streaming scratch (its estimate) where the engine streams weights."""
    activation = memory["activation_bytes"] if memory.get("activation_bytes") is not None \
        else memory["activation_estimate_bytes"]
    scratch = (memory.get("streaming_scratch_bytes") or 0) if streams(memory) else 0
    return activation + scratch


def streams(memory: dict) -> bool:
    return memory.get("weight_streaming_budget_bytes") is not None


def streamed_bytes(memory: dict) -> int:
    """DiT weight bytes that stay in host memory and cross PCIe at every call of the engine."""
    return max(0, memory["streamable_bytes"] - memory["weight_streaming_budget_bytes"]) if streams(memory) else 0


def gpu_plan(engines: list[dict], overlap: bool) -> dict:
    """The GPU total of a TensorRT bundle: `engines` are manifest engine entries (name, role,
    latent_frames, memory), overlap whether the runtime runs the stages on their own streams."""
    memories = [e["memory"] for e in engines]
    total = plan_total(memories)
    buffers = context_buffers([(e["name"], e["role"], activation_need(e["memory"])) for e in engines], overlap)
    streamed = {e["name"]: streamed_bytes(e["memory"]) for e in engines if streams(e["memory"])}
    chains: dict[str, int] = {}     # streamed bytes per chunk: one call of each part of one DiT chain
    for e in engines:
        if e["name"] in streamed:
            key = json.dumps(e.get("latent_frames"))
            chains[key] = chains.get(key, 0) + streamed[e["name"]]
    engines_bytes = total["engines_bytes"] - sum(streamed.values())
    activations = sum(b.nbytes for b in buffers)
    return {**total, "engines_bytes": engines_bytes, "activation_bytes": activations,
            "total_bytes": engines_bytes + activations + total["io_bytes"], "overlap": overlap,
            "contexts": [b.to_json() for b in buffers], "streamed_bytes": streamed,
            "streamed_bytes_per_chunk": max(chains.values(), default=0)}


def fit_problem(total: dict, profile, budget_gb: float | None = None) -> str | None:
    """None when the plan fits the memory budget (the profile's, or `budget_gb`); else the numbers."""
    budget = budget_gb if budget_gb is not None else profile.memory_budget_gb
    if budget is None:
        return None
    if total["total_bytes"] <= budget * GIB:
        return None
    return (f"the bundle needs {size_text(total['total_bytes'])} on the GPU (engines {size_text(total['engines_bytes'])} + "
            f"activations {size_text(total['activation_bytes'])}{' (estimated)' if total['activation_estimated'] else ''}"
            f" + I/O {size_text(total['io_bytes'])}) but {card(profile, total.get('card_gb'))} has a budget of "
            f"{budget_text(budget)}")


def budget_text(budget_gb: float) -> str:
    return f"{budget_gb:g} GiB" if budget_gb >= 0.1 else size_text(int(budget_gb * GIB))


def card(profile, card_gb: float | None = None) -> str:
    """"rtx4070 (12 GB)"; with --vram, the memory planned for."""
    if card_gb is not None and card_gb != profile.memory_gb:
        return f"{profile.name} planned for {card_gb:g} GB"
    return f"{profile.name} ({profile.memory_gb} GB)" if profile.memory_gb else profile.name


def streaming_seconds(nbytes: int, profile) -> float | None:
    """The time `nbytes` take over the profile's host link at its full rate (an estimate: a lower bound)."""
    return nbytes / (profile.pcie_gb_s * 1e9) if profile is not None and profile.pcie_gb_s else None


def measure_lines(total: dict, profile) -> list[str]:
    """What a GPU plan does to fit: how the contexts share buffers, the DiT weights streamed and their cost."""
    overlap = total["overlap"]
    buffers = " | ".join(f"{', '.join(b['engines'])} {size_text(b['bytes'])}" for b in total["contexts"])
    how = ("overlap on: one per lane, the DiT parts share one" if overlap else
           "overlap off: one for every engine, the stages one after another, 1 chunk in flight")
    lines = [f"          context buffers ({how}): {buffers}"]
    if total["streamed_bytes"]:
        per_chunk = total["streamed_bytes_per_chunk"]
        seconds = streaming_seconds(per_chunk, profile)
        cost = (f", at least {seconds * 1e3:.0f} ms per chunk over PCIe at {profile.pcie_gb_s} GB/s (estimate: the "
                f"bytes over the link's rate)") if seconds else ""
        lines.append("          weight streaming: " + ", ".join(f"{name} streams {size_text(n)} per call"
                                                             for name, n in total["streamed_bytes"].items())
                     + f"; {size_text(per_chunk)} per chunk{cost}")
    return lines


def describe_plan(total: dict, profile) -> list[str]:
    """engines.inspect's memory plan lines."""
    host = profile is None or profile.memory_budget_gb is None
    lines = [f"memory    engines {total['engines_bytes'] / GIB:.2f} GiB + activations "
             f"{total['activation_bytes'] / GIB:.2f} GiB{' (ONNX estimate, no fusion)' if total['activation_estimated'] else ''}"
             f" + I/O {total['io_bytes'] / GIB:.2f} GiB = {total['total_bytes'] / GIB:.2f} GiB "
             f"{'in host memory' if host else 'on the GPU'}"]
    if host:
        return lines
    if "contexts" in total:
        lines += measure_lines(total, profile)
    budget = total.get("budget_gb") or profile.memory_budget_gb
    problem = fit_problem(total, profile, budget)
    lines.append(f"          {card(profile, total.get('card_gb'))}: budget {budget_text(budget)}: "
                 + (f"WARNING: does not fit: {problem}" if problem else
                    f"fits ({size_text(total['total_bytes'])} of {budget_text(budget)})"))
    return lines
