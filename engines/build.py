"""ONNX graph -> TensorRT engine, for every graph of an export folder, through the build cache.

One code path for TensorRT-RTX and full TensorRT (their differences live in engines/flavours.py):
  Builder -> strongly typed network -> OnnxParser.parse_from_file (so external data is found next
  to the .onnx) -> check I/O against export.json -> check attention -> BuilderConfig (target,
  workspace limit, optimization level) -> optimization profile from export.json `dynamic` ->
  build_serialized_network -> engine file in the cache.

Each engine is built in a fresh process: its peak RSS (getrusage) is then that engine's alone, and
the memory of a large DiT part goes back to the system before the next part starts.
"""
import hashlib
import multiprocessing
import resource
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from contract.files import temp_path
from contract.files import atomic_write
from engines.cache import DEFAULT_CACHE_DIR, EngineCache, cache_key
from engines.export_folder import (ExportFolder, GraphSpec, count_attention_nodes, graph_sha256,
                                   load_graph_proto, weight_bytes)
from engines.flavours import (attention_layer_types, check_build_machine, import_tensorrt, local_gpu,
                              network_flags, set_target, set_workspace_limit)
from engines.profiles import GpuProfile

# Bump when this file changes what an engine is made of: every cached engine is then rebuilt.
RECIPE = 1

TRT_DTYPE_NAMES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8",
                   "INT32": "int32", "INT64": "int64", "UINT8": "uint8", "BOOL": "bool",
                   "FP8": "float8_e4m3fn", "INT4": "int4", "FP4": "float4_e2m1"}


class BuildError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class EngineJob:
    """Everything one engine build needs; crosses into the builder process, so plain data only."""
    name: str
    onnx_path: str
    engine_path: str
    flavour: str
    compute_capabilities: tuple
    inputs: list
    outputs: list
    dynamic: dict
    onnx_attention_nodes: int
    require_fused_attention: bool   # DiT graphs: attention must be ONNX Attention -> fused layers
    optimization_level: int
    workspace_bytes: int
    weight_streaming: bool = False   # BuilderFlag.WEIGHT_STREAMING (DiT engines, when engines/fit.py asks)


@dataclass
class EngineResult:
    name: str        # "encoder", "dit", "dit.0", "decoder"
    member: str      # its name in the bundle: "dit.0.engine"
    path: Path       # the engine file, in the cache
    sha256: str
    size: int
    cache_hit: bool
    record: dict     # build record: timings, peak RSS, network summary, settings


# ---------------------------------------------------------------- one engine (builder process)

def build_engine(job: EngineJob) -> dict:
    """Parse, check, build and write one engine; returns what happened. Runs in the builder process."""
    trt = import_tensorrt(job.flavour)
    logger = _make_logger(trt, job.name)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    if not builder:
        raise BuildError(f"{job.name}: could not create a {job.flavour} builder: {logger.text()}")
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(job.onnx_path):
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{job.name}: TensorRT's ONNX parser rejected {job.onnx_path}:\n  {errors}")
    parse_seconds = time.perf_counter() - t0

    io = check_io(trt, network, job)
    attention = check_attention(trt, network, job)
    layer_types = Counter(network.get_layer(i).type.name for i in range(network.num_layers))

    config = builder.create_builder_config()
    set_target(trt, config, job.flavour, job.compute_capabilities)
    set_workspace_limit(trt, config, job.workspace_bytes)
    config.builder_optimization_level = job.optimization_level
    if job.weight_streaming:   # the network is strongly typed (network_flags), as weight streaming needs
        config.set_flag(trt.BuilderFlag.WEIGHT_STREAMING)
    # Layer names and kernels stay in the plan, for the engine inspector (python -m engines.inspect).
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    add_optimization_profile(builder, config, job)
    monitor = _make_progress_monitor(trt, job.name)
    config.progress_monitor = monitor

    t1 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - t1
    if plan is None:
        raise BuildError(f"{job.name}: TensorRT could not build the engine:\n  {logger.text()}")
    data = memoryview(plan)
    sha256 = hashlib.sha256(data).hexdigest()
    atomic_write(Path(job.engine_path), data)
    activation = activation_bytes(trt, logger, data, job.compute_capabilities)
    return {
        "parse_seconds": round(parse_seconds, 3), "build_seconds": round(build_seconds, 3),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "size": len(data), "sha256": sha256, "activation_bytes": activation,
        "network": {"layers": network.num_layers, "layer_types": dict(sorted(layer_types.items())),
                    "inputs": io["inputs"], "outputs": io["outputs"]},
        "attention": attention,
    }


def activation_bytes(trt, logger, plan, compute_capabilities) -> int | None:
    """The engine's activation memory at its profile's largest shapes, as TensorRT reports it once
    the engine is deserialized; None where this machine has no GPU of a target kind to do that on
    (TensorRT-RTX builds ahead of time without one: engines/memory.py then estimates it)."""
    try:
        if local_gpu()["compute_capability"] not in compute_capabilities:
            return None
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        return int(engine.device_memory_size_v2) if engine is not None else None
    except (RuntimeError, AttributeError):
        return None


def _tensor_io(t) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": TRT_DTYPE_NAMES.get(t.dtype.name, t.dtype.name)}


def check_io(trt, network, job: EngineJob) -> dict:
    """The network's inputs/outputs must be what export.json says: names, dtypes, shapes."""
    got = {"inputs": [_tensor_io(network.get_input(i)) for i in range(network.num_inputs)],
           "outputs": [_tensor_io(network.get_output(i)) for i in range(network.num_outputs)]}
    for kind, want in (("inputs", job.inputs), ("outputs", job.outputs)):
        have = {t["name"]: t for t in got[kind]}
        if sorted(have) != sorted(t["name"] for t in want):
            raise BuildError(f"{job.name}: export.json lists {kind} {sorted(t['name'] for t in want)} but the "
                             f"ONNX graph has {sorted(have)}")
        for w in want:
            h = have[w["name"]]
            ok = h["dtype"] == w["dtype"] and len(h["shape"]) == len(w["shape"])
            for hd, wd in zip(h["shape"], w["shape"]):
                if kind == "inputs":   # inputs: dynamic exactly where export.json says so
                    ok &= (hd == -1) if isinstance(wd, str) else (hd == wd)
                elif hd != -1:         # outputs: TensorRT may not know a derived size until runtime
                    ok &= not isinstance(wd, str) and hd == wd
            if not ok:
                raise BuildError(f"{job.name}: export.json says {w['name']} is {w['dtype']} {w['shape']}, the "
                                 f"ONNX graph parses to {h['dtype']} {h['shape']} (-1 = dynamic)")
    return got


def check_attention(trt, network, job: EngineJob) -> dict:
    """Every ONNX Attention node must have become a TensorRT attention (a pair of boundary layers).

    In a DiT graph, attention that arrives as MatMul/Softmax (an opset-18 export) is not fused into
    one kernel: TensorRT would run it as separate GEMMs with the full score matrix in memory. Fail
    then, rather than ship a slow engine.
    """
    att_in, att_out = attention_layer_types(trt)
    types = [network.get_layer(i).type for i in range(network.num_layers)]
    n_in, n_out = types.count(att_in), types.count(att_out)
    n_softmax = types.count(trt.LayerType.SOFTMAX)
    n_onnx = job.onnx_attention_nodes
    problems = []
    if n_in != n_onnx or n_out != n_onnx:
        problems.append(f"the ONNX graph has {n_onnx} Attention nodes but the network has {n_in} "
                        f"{att_in.name} and {n_out} {att_out.name} layers")
    if job.require_fused_attention and n_onnx == 0:
        problems.append("it has no ONNX Attention node: its attention was exported decomposed (MatMul/Softmax, "
                        "as opset < 23 does); export with opset 23 (torch.onnx.export(..., dynamo=True, "
                        "opset_version=23)) so scaled_dot_product_attention becomes ONNX Attention")
    if job.require_fused_attention and n_softmax:
        problems.append(f"it has {n_softmax} SoftMax layers outside attention layers (unfused attention)")
    if problems:
        raise BuildError(f"{job.name}: attention check failed: " + "; ".join(problems))
    return {"onnx_attention_nodes": n_onnx, "attention_input_layers": n_in,
            "attention_output_layers": n_out, "softmax_layers": n_softmax}


def _shape_at(shape, dynamic, which):
    return [dynamic[d][which] if isinstance(d, str) else d for d in shape]


def add_optimization_profile(builder, config, job: EngineJob) -> None:
    dynamic_inputs = [t for t in job.inputs if any(isinstance(d, str) for d in t["shape"])]
    if not dynamic_inputs:
        return
    profile = builder.create_optimization_profile()
    for t in dynamic_inputs:
        profile.set_shape(t["name"], *(_shape_at(t["shape"], job.dynamic, w) for w in ("min", "opt", "max")))
    config.add_optimization_profile(profile)


def _make_logger(trt, name):
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                log(f"  [{name}] TensorRT {severity.name}: {msg}")

        def text(self):
            return "\n  ".join(self.errors[-5:]) or "(TensorRT logged no error)"
    return Logger()


def _make_progress_monitor(trt, name, every_s=15.0):
    """Log lines for the top phases of a build, and a heartbeat during long ones."""
    class Progress(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.depth, self.t0, self.last = {}, time.monotonic(), time.monotonic()

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = depth
            if depth <= 1:
                log(f"  [{name}] {time.monotonic() - self.t0:6.1f} s  {'  ' * depth}{phase_name}")

        def step_complete(self, phase_name, step):
            if time.monotonic() - self.last > every_s:
                self.last = time.monotonic()
                log(f"  [{name}] {self.last - self.t0:6.1f} s  ... {phase_name}, step {step + 1}")
            return True   # False would cancel the build

        def phase_finish(self, phase_name):
            pass
    return Progress()


# ---------------------------------------------------------------- the builder process

def _builder_process(job: EngineJob, conn) -> None:
    # Ctrl-C is the parent's to handle: it kills this process and removes its temporary file. A
    # KeyboardInterrupt raised inside TensorRT's callbacks here would only garble the log.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(("ok", build_engine(job)))
    except BuildError as e:
        conn.send(("error", str(e)))
    except BaseException as e:  # noqa: BLE001 - report anything, the parent raises it
        conn.send(("error", f"{job.name}: {type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def build_engine_in_subprocess(job: EngineJob) -> dict:
    ctx = multiprocessing.get_context("spawn")   # a clean process: no inherited memory, no fork+threads
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_builder_process, args=(job, sender), name=f"trt-build-{job.name}", daemon=True)
    proc.start()
    sender.close()
    try:
        kind, payload = receiver.recv()
    except EOFError:
        proc.join()
        hint = " (killed: out of memory?)" if proc.exitcode == -signal.SIGKILL else ""
        raise BuildError(f"{job.name}: the builder process died with exit code {proc.exitcode}{hint}") from None
    except BaseException:   # Ctrl-C: stop the builder, remove what it was writing
        proc.kill()
        proc.join()
        temp_path(Path(job.engine_path), proc.pid).unlink(missing_ok=True)
        raise
    proc.join()
    if kind == "error":
        raise BuildError(payload)
    return payload


# ---------------------------------------------------------------- all engines of an export

def build_settings(profile: GpuProfile, trt_version: str, optimization_level: int,
                   budget_gb: float | None = None) -> dict:
    """Everything besides the graph that decides what engine comes out (part of the cache key).
    The workspace (each engine's scratch) is capped at the memory budget: the profile's, or a
    smaller one (--vram)."""
    budget = min(profile.memory_budget_gb, budget_gb or profile.memory_budget_gb)
    return {"recipe": RECIPE, "flavour": profile.flavour, "tensorrt_version": trt_version,
            "compute_capabilities": list(profile.compute_capabilities), "strongly_typed": True,
            "optimization_level": optimization_level, "profiling_verbosity": "DETAILED",
            "workspace_bytes": int(budget * 2**30)}


def engine_key(spec: GraphSpec, settings: dict, streaming: bool, graph_hash: str | None = None) -> str:
    """An engine's build cache key: its graph and the build settings. Streamable engines are other
    engines: their flag is part of their key, absent when off, so that the keys of every engine built
    before weight streaming existed still hold."""
    return cache_key({"graph_sha256": graph_hash or graph_sha256(spec), "graph": spec.entry(), "settings": settings,
                      **({"weight_streaming": True} if streaming else {})})


def needs_fused_attention(spec: GraphSpec) -> bool:
    return spec.role == "dit" and (spec.blocks is None or spec.blocks[1] > spec.blocks[0])


def build_engines(export: ExportFolder, profile: GpuProfile, cache_dir=DEFAULT_CACHE_DIR, force=False,
                  optimization_level=3, budget_gb: float | None = None,
                  weight_streaming: frozenset = frozenset()) -> tuple[list[EngineResult], dict]:
    """Every graph of `export` as an engine for `profile`, from the cache where it holds one.
    budget_gb: the memory budget when not the profile's (--vram); weight_streaming: the names of the
    engines built streamable (engines/fit.py decides).

    Returns the engines in chain order and the build settings used.
    """
    trt = import_tensorrt(profile.flavour)
    check_build_machine(trt, profile.flavour, profile.compute_capabilities)
    settings = build_settings(profile, trt.__version__, optimization_level, budget_gb)
    protos = {spec.name: load_graph_proto(spec.path) for spec in export.graphs}
    weights = sum(weight_bytes(p) for name, p in protos.items() if name not in weight_streaming)
    if weights > settings["workspace_bytes"]:
        raise BuildError(f"the export's weights ({weights / 2**30:.1f} GiB{' not streamed' if weight_streaming else ''}) "
                         f"exceed the {profile.name} memory budget ({round(settings['workspace_bytes'] / 2**30, 6):g} GiB): "
                         f"it cannot run there")
    cache = EngineCache(cache_dir)
    results = []
    for i, spec in enumerate(export.graphs, 1):
        top, nested = count_attention_nodes(protos[spec.name])
        if nested:
            raise BuildError(f"{spec.name}: {nested} Attention nodes sit inside If/Loop subgraphs, where "
                             f"TensorRT cannot build attention; export without control flow")
        graph_hash = graph_sha256(spec)
        streaming = spec.name in weight_streaming
        key = engine_key(spec, settings, streaming, graph_hash)
        record = None if force else cache.lookup(key)
        hit = record is not None
        if hit:
            log(f"[{i}/{len(export.graphs)}] {spec.name}: cached engine {key[:16]} "
                f"(built in {record['build_seconds']:.1f} s)")
        else:
            log(f"[{i}/{len(export.graphs)}] {spec.name}: building with {profile.flavour} {trt.__version__} "
                f"for SM {', '.join(profile.compute_capabilities)} ({export.precision}, {top} attention nodes)")
            job = EngineJob(spec.name, str(spec.path), str(cache.engine_path(key)), profile.flavour,
                            profile.compute_capabilities, spec.inputs, spec.outputs, spec.dynamic, top,
                            needs_fused_attention(spec), optimization_level, settings["workspace_bytes"], streaming)
            t0 = time.perf_counter()
            built = build_engine_in_subprocess(job)
            record = {"key": key, "graph": spec.name, "graph_sha256": graph_hash, "settings": settings,
                      "weight_streaming": streaming,
                      "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "wall_seconds": round(time.perf_counter() - t0, 3), **built}
            cache.store(key, record)
            log(f"    {spec.name}: parse {record['parse_seconds']:.1f} s, build {record['build_seconds']:.1f} s, "
                f"peak RSS {record['peak_rss_bytes'] / 2**30:.2f} GiB, engine {record['size'] / 2**20:.1f} MiB")
        results.append(EngineResult(spec.name, f"{spec.name}.engine", cache.engine_path(key), record["sha256"],
                                    record["size"], hit, record))
    return results, settings
