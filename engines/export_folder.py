"""Reading an export folder (docs/export-format.md): export.json, its graphs, their files.

Everything the engine stage needs comes from export.json; the ONNX files are opened only to find
their external data and count their Attention nodes (without loading any weights).
"""
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from contract.files import sha256_file
from contract.graphs import Contract, ContractError, Graph, read_export_json
from contract.graphs import with_reae_slice as contract_reae_slice

# Bytes per element of the ONNX initializer types a SwiftVR export can hold.
_ONNX_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
                  onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4,
                  onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1, onnx.TensorProto.BOOL: 1,
                  onnx.TensorProto.FLOAT8E4M3FN: 1}


@dataclass
class GraphSpec:
    """One graph of the export: what export.json says about it, and where its file is."""
    graph: Graph       # the contract's description (contract/graphs.py)
    path: Path

    @property
    def name(self) -> str:       # file name without .onnx: "encoder", "dit.f6.0", "decoder"
        return self.graph.name

    @property
    def role(self) -> str:       # "encoder" | "dit" | "decoder"
        return self.graph.role

    @property
    def inputs(self) -> list[dict]:   # [{"name", "shape" (ints, strings for dynamic dims), "dtype"}]
        return [t.to_json() for t in self.graph.inputs]

    @property
    def outputs(self) -> list[dict]:
        return [t.to_json() for t in self.graph.outputs]

    @property
    def dynamic(self) -> dict:        # {"T": {"min", "opt", "max"}}
        return self.graph.dynamic

    @property
    def blocks(self) -> list | None:  # DiT parts: [first, end) transformer blocks
        return list(self.graph.blocks) if self.graph.blocks else None

    def entry(self) -> dict:
        """The export.json description of this graph (part of the engine cache key)."""
        return {"file": self.path.name, "inputs": self.inputs, "outputs": self.outputs,
                "dynamic": self.dynamic, "blocks": self.blocks}


@dataclass
class ExportFolder:
    path: Path
    meta: dict               # export.json as read
    contract: Contract       # its graphs, DiT chains and states, checked
    graphs: list[GraphSpec]  # encoder, the dit parts of every latent count in chain order, decoder

    @property
    def precision(self) -> str:
        return self.meta["precision"]

    @property
    def resolution_name(self) -> str:
        """"360p" for an output height of 360."""
        return f"{self.meta['output_size'][1]}p"


def read_export(path) -> ExportFolder:
    path = Path(path)
    meta, contract = read_export_json(path)
    for key in ("precision", "output_size"):
        if key not in meta:
            raise ValueError(f"{path / 'export.json'} has no {key!r}")
    graphs = [_graph_spec(path, graph) for graph in contract.graphs()]
    return ExportFolder(path, meta, contract, graphs)


def with_reae_slice(export: ExportFolder, latents: int) -> ExportFolder:
    """The export with its encoder built for at most 4 * `latents` frames per call and its decoder for
    at most `latents` latent frames (contract.graphs.with_reae_slice): the runtime then runs a chunk's
    ReAE in slices of that many, so its activations are those of a slice, not of a whole chunk."""
    try:
        contract = contract_reae_slice(export.contract, latents)
    except ContractError as e:
        raise ValueError(f"--reae-slice: {e}") from None
    roles = {"encoder": contract.encoder, "decoder": contract.decoder}
    graphs = [replace(spec, graph=roles.get(spec.role, spec.graph)) for spec in export.graphs]
    return replace(export, graphs=graphs, contract=contract)


def _graph_spec(folder: Path, graph: Graph) -> GraphSpec:
    path = folder / graph.file
    if not path.is_file():
        raise FileNotFoundError(f"export.json names {graph.file} but {path} does not exist")
    return GraphSpec(graph, path)


def load_graph_proto(path: Path) -> onnx.ModelProto:
    """The ONNX model without its weights' external data (cheap even for a 10 GB DiT)."""
    return onnx.load(str(path), load_external_data=False)


def _all_graphs(graph: onnx.GraphProto, depth=0):
    """The graph and every subgraph (If/Loop/Scan bodies) in it, with nesting depth."""
    yield graph, depth
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g, depth + 1)
            for sub in attr.graphs:
                yield from _all_graphs(sub, depth + 1)


def _all_tensors(model: onnx.ModelProto):
    for graph, _ in _all_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                yield from attr.tensors


def external_data_files(path: Path, model: onnx.ModelProto | None = None) -> list[Path]:
    """The external data files the ONNX file at `path` refers to (relative to its folder)."""
    model = model or load_graph_proto(path)
    names = set()
    for t in _all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names.add(next(e.value for e in t.external_data if e.key == "location"))
    files = [path.parent / n for n in sorted(names)]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{path.name} refers to external data {f.name}, which is missing")
    return files


def _tensor_bytes(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n * _ONNX_ITEMSIZE.get(t.data_type, 4)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers / constants, from their dims and dtype (data not loaded)."""
    return sum(_tensor_bytes(t) for t in _all_tensors(model))


def largest_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the largest initializer / constant (data not loaded)."""
    return max((_tensor_bytes(t) for t in _all_tensors(model)), default=0)


def count_attention_nodes(model: onnx.ModelProto) -> tuple[int, int]:
    """(ONNX Attention nodes in the main graph, Attention nodes inside If/Loop bodies)."""
    top = nested = 0
    for graph, depth in _all_graphs(model.graph):
        n = sum(1 for node in graph.node if node.op_type == "Attention" and node.domain in ("", "ai.onnx"))
        if depth == 0:
            top += n
        else:
            nested += n
    return top, nested


def graph_files(spec: GraphSpec) -> list[Path]:
    """The .onnx file then its external data files: everything the graph is made of."""
    return [spec.path] + external_data_files(spec.path)


def graph_sha256(spec: GraphSpec) -> str:
    """Content hash of the graph: its .onnx and its external data, by name and content."""
    h = hashlib.sha256()
    for f in graph_files(spec):
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()
