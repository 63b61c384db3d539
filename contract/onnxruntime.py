"""ONNX Runtime sessions, made one way for every stage that runs the graphs (export.verify, calibration,
engines.verify's reference and cpu-bundle runs, the runtime's backend), and the runner that executes a
contract's graphs in them on numpy arrays (contract/chain.py's GraphRunner).

    sessions = export_sessions(folder, contract, widen=precision == "bf16")
    chain = GraphChain(contract, SessionRunner(sessions))

onnxruntime (and onnx, to widen bf16 graphs) are imported only when a session is made: reading a
contract needs neither.
"""
import threading
from pathlib import Path

from .chain import HostArrays, host_feeds


def _ort():
    import onnxruntime
    return onnxruntime


def session_options(ort, threads: int | None = None, basic_optimizations: bool = False, arena: bool = True):
    """ort: the onnxruntime module. threads: intra-op threads (None: ONNX Runtime's default, one per
    core). basic_optimizations: ORT_ENABLE_BASIC instead of every optimization (FP8 Q/DQ graphs need
    it in ORT 1.31, see calibration/stream.py). arena: the process's shared CPU arena (below); False:
    no arena, each run's memory given back when the run ends, for a process that allocates much
    between runs by other means (export.verify's torch reference)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if basic_optimizations
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if threads:
        options.intra_op_num_threads = threads
    # With overlapping lanes three graphs run at once on the same cores; idle pool threads that
    # spin for work take cycles from the other lanes (measured on 2 busy cores: overlap up to ~30%
    # slower with spinning; no slower without it on an idle machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3          # errors only: no warnings about unused initializers
    options.add_session_config_entry("optimization.disable_specified_optimizers", QDQ_BROKEN_OPTIMIZERS)
    if arena:
        use_shared_cpu_arena(ort)
        options.add_session_config_entry("session.use_env_allocators", "1")
    else:
        options.enable_cpu_mem_arena = False
    return options


_arena_lock = threading.Lock()
_arena_registered = False


def use_shared_cpu_arena(ort) -> None:
    """One CPU memory arena for every session of the process (registered once), growing by what is
    asked (not by powers of two). By default each InferenceSession keeps an arena of its own, sized
    by doubling and never given back: three graphs' arenas stay resident side by side although the
    stages run one after another. Measured on the tiny preset at 704x576 (carphone, 120 frames, peak
    RSS): 15.1 GiB with an arena per session, 2.5 GiB with one shared arena and the ReAE in slices of
    one latent frame (docs/benchmarks.md "Host memory")."""
    global _arena_registered
    with _arena_lock:
        if _arena_registered:
            return
        # OrtArenaCfg(max_mem 0: no limit, arena_extend_strategy 1: kSameAsRequested, initial chunk and
        # max dead bytes per chunk -1: ONNX Runtime's defaults)
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, 1, -1, -1))
        _arena_registered = True


# ORT 1.31 moves a DequantizeLinear past Reshape/Slice onto a graph output and gives the new
# QuantizeLinear a uint8 zero point with output_dtype int8: session creation fails for INT8 graphs
# from python -m calibration (ReAE states are such outputs). No effect on graphs without Q/DQ.
QDQ_BROKEN_OPTIMIZERS = "QDQPropagationTransformer"


def widen_bf16(model):
    """The same onnx.ModelProto with every bf16 tensor (initializers, constants, casts, I/O) made
    float32, in place. ONNX Runtime's CPU kernels have no bf16 (Conv, MatMul, ...), and its quantizer
    works on float32: the widened graph has the bf16-rounded weights and constants, float32 math."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    bf16, f32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT

    def widen_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
        if t.data_type != bf16:
            return t
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    graph = model.graph
    for i, t in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(widen_tensor(t))
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == bf16:
                attr.i = f32
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(widen_tensor(attr.t))
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type == bf16:
            value.type.tensor_type.elem_type = f32
    return model


def graph_session(path, options, providers, widen: bool = False):
    """An InferenceSession of the graph file `path` (its external data beside it). widen: run it
    with every bf16 tensor widened to float32 (widen_bf16)."""
    if widen:
        import onnx
        return _ort().InferenceSession(widen_bf16(onnx.load(str(path))).SerializeToString(), options,
                                       providers=providers)
    return _ort().InferenceSession(str(path), options, providers=providers)


def export_sessions(folder, contract, *, widen: bool = False, files: dict | None = None, threads: int | None = None,
                    basic_optimizations: bool = False, providers=("CPUExecutionProvider",), arena: bool = True) -> dict:
    """{graph name: InferenceSession} for every graph of an export folder's contract. files:
    {export.json file name: the file to run instead} (calibration's quantized or widened graphs).
    arena: as session_options."""
    options = session_options(_ort(), threads, basic_optimizations, arena)
    return {g.name: graph_session((files or {}).get(g.file, Path(folder) / g.file), options, list(providers), widen)
            for g in contract.graphs()}


def bundle_session(bundle, member: str, files: list, options, providers):
    """An InferenceSession of a cpu bundle's graph `member` (a contract.bundle.Bundle, open): the
    graph and its external data (`files` besides the member) go to ONNX Runtime from the mapped
    bundle, nothing is unpacked to disk. `options` takes the external data: one per session."""
    data = [f for f in files if f != member]
    views = [bundle.view(f) for f in data]
    if data:
        options.add_external_initializers_from_files_in_memory(data, views, [len(v) for v in views])
    session = _ort().InferenceSession(bundle.read(member), options, providers=providers)
    for view in views:           # ONNX Runtime has copied the weights; the bundle may be closed now
        view.release()
    return session


class SessionRunner(HostArrays):
    """contract.chain.GraphRunner over InferenceSessions by graph name, on numpy arrays: each input
    given in its graph's dtype (bf16 graphs run widened, so float32). record_feeds: keep every call's
    input feeds in `feeds`, per graph name, in call order (calibration's data): in lists, or, given a
    dict {graph name: anything with append}, there (calibration keeps them on disk)."""

    def __init__(self, sessions: dict, record_feeds: bool | dict = False):
        self.sessions = sessions
        if isinstance(record_feeds, dict):
            self.feeds = record_feeds
        else:
            self.feeds = {name: [] for name in sessions} if record_feeds else None

    def run(self, graph, inputs: dict) -> dict:
        feeds = host_feeds(graph, inputs)
        if self.feeds is not None:
            self.feeds[graph.name].append(feeds)
        names = graph.output_names
        return dict(zip(names, self.sessions[graph.name].run(names, feeds)))
