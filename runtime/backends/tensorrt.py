"""The TensorRT backend: a bundle's engines (TensorRT-RTX or full TensorRT) on one NVIDIA GPU.

Loading checks, in this order, so that each failure says what to do:
  1. the TensorRT module the bundle was built with can be imported (tensorrt_rtx or tensorrt);
  2. cuda-python can be imported and sees a GPU;
  3. the GPU's compute capability is one the bundle targets;
  4. `Runtime.get_engine_validity` accepts every engine (TensorRT version, compute capability,
     driver, memory), before anything is deserialized.

Shared by all Sessions: the Runtime, the deserialized engines (read-only; DiT engines with the
weight-streaming budget the bundle's memory plan set, before any context exists) and, for
TensorRT-RTX, the runtime cache of the kernels it compiles on this GPU (rtxcache.py: loaded with the
bundle, saved as Sessions close). Per Session (in TensorRTKernels): one execution context per engine
with user-managed activation memory, laid out by contract/context_memory.py as the memory plan
counts it (engines that never run at once share a buffer: the DiT parts always, every engine when
the stages do not overlap), CUDA streams per stage, the boundary states and latent history as
device arrays. The stages are
contract/chain.py's GraphChain over EngineRunner (one engine run on the current stream); engine I/O
dtypes are checked against the manifest on load. Everything runs with the bundle's GPU as the
current device, from whatever thread (cuda.py). Each stage runs on its own stream and waits for its
inputs with events (runtime/lanes.py), so encode of chunk k+1, DiT of chunk k and decode of chunk
k-1 overlap on the GPU; frames go up from and come back to pinned host buffers.
"""
import logging

import numpy as np

from engines import flavours
from engines.flavours import MODULES

from contract.chain import GraphChain
from contract.context_memory import context_buffers

from ..backend import LoadedModel, Runner
from .cuda import Cuda, DeviceArray, DeviceBuffer, Event, PinnedPool, copy_rows
from .rtxcache import RuntimeCache, cache_path
from ..errors import MissingPackageError, RuntimeSetupError
from ..lanes import StageStats, cuda_lanes
from ..spec import plan_from_meta, spec_from_meta

log = logging.getLogger(__name__)
INSTALL = {"tensorrt-rtx": "pip install tensorrt-rtx",
           "tensorrt": 'pip install "tensorrt>=10.14"   (from NVIDIA\'s index, https://pypi.nvidia.com)'}


def import_tensorrt(flavour: str):
    """engines.flavours.import_tensorrt, with the runtime's errors (what to install to run a bundle)."""
    if flavour not in MODULES:
        raise RuntimeSetupError(f"unknown TensorRT flavour {flavour!r} in the bundle (known: {', '.join(MODULES)})")
    try:
        return flavours.import_tensorrt(flavour)
    except ImportError as e:
        raise MissingPackageError(f"a {flavour} bundle", MODULES[flavour], INSTALL[flavour], e.__cause__ or e) from None


def execution_plan(manifest: dict, source: str):
    """What TensorRTKernels executes, from the manifest alone (no GPU, no TensorRT): the engines by
    name, the DiT chain per latent-frame count (each part fed `latents` and the parts before it),
    the state pairs. A contract.graphs.Contract; a RuntimeSetupError names what does not fit."""
    return plan_from_meta(manifest, source)


class TensorRTModel(LoadedModel):
    def __init__(self, bundle, *, device: int = 0):
        manifest = bundle.manifest
        target, builder = manifest["target"], manifest["builder"]
        flavour = target["flavour"]
        trt = import_tensorrt(flavour)
        self.trt = trt
        built_with = f"{flavour} {builder.get('version')}"
        if builder.get("version") and builder["version"] != trt.__version__:
            raise RuntimeSetupError(f"{bundle.path} was built with {built_with}, this machine has "
                                    f"{MODULES[flavour]} {trt.__version__}; engines only load in the TensorRT "
                                    f"version that built them. Install {MODULES[flavour]}=={builder['version']} "
                                    f"or rebuild: python -m engines --export DIR --gpu {target['gpu']}")
        self.cuda = Cuda(device)
        gpu = f"{self.cuda.name} (SM {self.cuda.compute_capability})"
        wanted = target.get("compute_capabilities") or []
        if wanted and self.cuda.compute_capability not in wanted:
            raise RuntimeSetupError(f"{bundle.path} is for {target['gpu']} (SM {', '.join(wanted)}); this GPU is "
                                    f"{gpu}. Build a bundle for it: python -m engines --export DIR --gpu NAME "
                                    f"(see engines/profiles.py; Hopper needs full TensorRT, or use --backend torch)")
        self.spec = spec_from_meta(manifest, str(bundle.path), "tensorrt", f"{gpu}, bundle for {target['gpu']}")
        self.manifest_plan = manifest.get("memory_plan")
        with self.cuda.current():
            self._load_engines(bundle, trt, built_with, gpu)
        self.plan = execution_plan(manifest, str(bundle.path))
        check_engine_io(trt, self.plan, self.engines, str(bundle.path))

    def _load_engines(self, bundle, trt, built_with: str, gpu: str) -> None:
        manifest = bundle.manifest
        target, flavour = manifest["target"], manifest["target"]["flavour"]
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines = {}
        for entry in manifest["engines"]:
            view = bundle.view(entry["member"])
            try:
                # TensorRT-RTX and TensorRT >= 10.x tell from the header whether an engine can run here.
                validity, diagnostics = (self.runtime.get_engine_validity(view)
                                         if hasattr(self.runtime, "get_engine_validity") else (None, 0))
                if validity is not None and validity == trt.EngineValidity.INVALID:
                    flags = trt.EngineInvalidityDiagnostics.__members__.values()
                    reasons = [d.name.lower().replace("_", " ") for d in flags if int(diagnostics) & int(d)]
                    raise RuntimeSetupError(
                        f"{bundle.path}: engine {entry['member']} cannot run here ({', '.join(reasons) or 'invalid'}). "
                        f"It was built by {built_with} for {target['gpu']}; this is {gpu} with "
                        f"{MODULES[flavour]} {trt.__version__}. Rebuild: python -m engines --export DIR --gpu NAME")
                engine = self.runtime.deserialize_cuda_engine(view)
            finally:
                view.release()
            if engine is None:
                raise RuntimeSetupError(f"{bundle.path}: TensorRT could not deserialize {entry['member']} (see the "
                                        f"TensorRT messages above)")
            set_weight_streaming(engine, entry, str(bundle.path))
            self.engines[entry["name"]] = engine
        # What each context needs, read once the streaming budgets are set (they add scratch to it).
        self.activation_needs = {name: int(e.device_memory_size_v2) for name, e in self.engines.items()}
        # Contexts get their activation memory from the Session (TensorRTKernels): user-managed. Full
        # TensorRT builds its kernels ahead of time: no runtime cache, the strategy given at creation.
        user_managed = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.runtime_cache, self.runtime_configs = None, {}
        if flavour == "tensorrt-rtx":
            first = next(iter(self.engines.values()))
            self.runtime_cache = RuntimeCache(trt, first, cache_path(manifest, self.cuda.name, trt.__version__))
            self.runtime_configs = {name: self.runtime_cache.config(e) for name, e in self.engines.items()}
            for config in self.runtime_configs.values():
                config.set_execution_context_allocation_strategy(user_managed)

    def execution_context(self, name: str):
        """A new execution context of engine `name` (with the runtime cache for TensorRT-RTX), on this GPU,
        without activation memory: TensorRTKernels hands it a buffer (set_device_memory)."""
        engine = self.engines[name]
        with self.cuda.current():
            if name in self.runtime_configs:
                context = engine.create_execution_context(self.runtime_configs[name])
            else:
                context = engine.create_execution_context(self.trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise RuntimeSetupError(f"TensorRT could not create an execution context for {name} "
                                    f"(out of GPU memory?)")
        return context

    def save_runtime_cache(self) -> None:
        if self.runtime_cache is not None:
            self.runtime_cache.save()

    def close(self) -> None:
        self.save_runtime_cache()

    def context_buffers(self, overlap: bool) -> list:
        """The activation buffers a Session allocates: contract.context_memory's layout of what each
        engine needs here, as the bundle's memory plan laid out its figures."""
        return context_buffers([(g.name, g.role, self.activation_needs[g.name]) for g in self.plan.graphs()], overlap)

    @property
    def planned_overlap(self) -> bool:
        """Whether the bundle's memory plan lets the stages overlap (engines/fit.py: false when only one
        context buffer for every engine fits the GPU)."""
        return (self.manifest_plan or {}).get("overlap", True)

    @property
    def default_in_flight(self) -> int:
        """3 chunks on their own streams; 1 where the memory plan has one context buffer for every
        engine (the stages then run one after another on one stream)."""
        return 3 if self.planned_overlap else 1

    def kernels(self, overlap: bool = True):
        return TensorRTKernels(self, overlap)

    def new_runner(self, overlap: bool, stats: StageStats) -> Runner:
        return Runner(self.kernels(overlap), self.lanes(overlap, stats))

    def lanes(self, overlap: bool, stats: StageStats) -> dict:
        return cuda_lanes(self.cuda, overlap, stats)

    def reset_peak_memory(self) -> None:
        self.cuda.peak_in_use = 0

    def memory(self) -> dict:
        in_use = self.cuda.memory_in_use()
        return {"device": f"{self.cuda.name} (cuda:{self.cuda.device}, whole GPU as the driver reports)",
                "in_use_bytes": in_use, "peak_bytes": self.cuda.peak_in_use}


class TensorRTKernels:
    def __init__(self, model: TensorRTModel, overlap: bool = True):
        """overlap: whether this Session's stages run on their own streams (engines on different lanes
        then get buffers of their own)."""
        self.m, self.cuda = model, model.cuda
        self.plan = model.plan
        self.contexts = {graph.name: model.execution_context(graph.name) for graph in self.plan.graphs()}
        self.context_memory = []
        if overlap and not model.planned_overlap:
            log.warning("this bundle's memory plan has one context buffer for every engine (overlap off, 1 chunk in "
                        "flight); overlapping the stages gives each lane its own and needs more GPU memory than planned")
        for buffer in model.context_buffers(overlap):
            memory = DeviceBuffer(self.cuda, buffer.nbytes)
            self.context_memory.append(memory)
            for name in buffer.engines:
                with self.cuda.current():
                    self.contexts[name].set_device_memory(memory.ptr, buffer.nbytes)
        self.pinned = PinnedPool(self.cuda)
        self.graphs = EngineRunner(model, self.contexts)
        # The stages are the contract's graph chain (contract/chain.py) over the contexts.
        chain = GraphChain(self.plan, self.graphs)
        self.zero_state, self.encode, self.dit, self.decode = chain.zero_state, chain.encode, chain.dit, chain.decode

    def host_frames(self, count: int) -> np.ndarray:
        width, height = self.m.spec.input_size
        return self.pinned.array((count, height, width, 3))

    def upload(self, host: np.ndarray):
        self.cuda.collect()                      # free what earlier chunks no longer use
        frames = DeviceArray(self.cuda, host.shape, "uint8")
        rt = self.cuda.rt
        self.cuda.call(rt.cudaMemcpyAsync, frames.ptr, host.ctypes.data, host.nbytes,
                       rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.cuda.stream.handle)
        self.pinned.release(host, after=Event(self.cuda, timing=False).record(self.cuda.stream))
        return frames

    def download(self, frames: DeviceArray, start: int, count: int) -> np.ndarray:
        per_frame = frames.nbytes // frames.shape[0]
        host = self.pinned.array((count, *frames.shape[1:]))
        rt = self.cuda.rt
        self.cuda.call(rt.cudaMemcpyAsync, host.ctypes.data, frames.ptr + start * per_frame, count * per_frame,
                       rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.cuda.stream.handle)
        return host

    def finish(self, host: np.ndarray) -> np.ndarray:
        owned = np.array(host)       # the caller keeps its frames; the pinned buffer is reused
        self.pinned.release(host)
        return owned

    def concat(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        return self.graphs.concat([a, b], 2)

    def take_last(self, x: DeviceArray, n: int) -> DeviceArray:
        f = x.shape[2]
        return x if n >= f else self.graphs.slice(x, 2, f - n, f)

    def zeros(self, like: DeviceArray, n: int) -> DeviceArray:
        _, c, _, h, w = like.shape
        return self.graphs.zeros((1, c, n, h, w), like.dtype)

    def close(self) -> None:
        """Frees this stream's page-locked buffers and the device arrays it has let go (the lanes
        have finished their work), and saves the kernels compiled meanwhile (TensorRT-RTX)."""
        self.pinned.close()
        self.cuda.collect()
        for memory in self.context_memory:      # the lanes have finished: no context runs any more
            memory.free()
        self.m.save_runtime_cache()


class EngineRunner:
    """contract.chain's GraphRunner over one stream's execution contexts (one per engine, by graph
    name): values are DeviceArrays, each engine enqueued on the current stream."""

    def __init__(self, model: TensorRTModel, contexts: dict):
        self.cuda, self.engines, self.contexts = model.cuda, model.engines, contexts

    def run(self, graph, inputs: dict) -> dict:
        """Run one engine: `graph` is its contract.graphs.Graph (tensor names and dtypes)."""
        context = self.contexts[graph.name]
        for tensor in graph.input_names:
            array = inputs[tensor]
            if not context.set_input_shape(tensor, array.shape):
                # Enqueueing would fail with no reason given, and the outputs' shapes would be -1s.
                low, _, high = self.engines[graph.name].get_tensor_profile_shape(tensor, 0)  # one profile (engines/build.py)
                raise RuntimeSetupError(f"engine {graph.name}: input {tensor} of shape {list(array.shape)} is outside "
                                        f"its optimization profile (min {list(low)}, max {list(high)})")
            context.set_tensor_address(tensor, array.ptr)
        outputs = {}
        for t in graph.outputs:
            outputs[t.name] = DeviceArray(self.cuda, context.get_tensor_shape(t.name), t.dtype)
            context.set_tensor_address(t.name, outputs[t.name].ptr)
        if not context.execute_async_v3(self.cuda.stream.handle):
            raise RuntimeError(f"TensorRT failed to enqueue {graph.name} (see the TensorRT messages above)")
        return outputs

    def zeros(self, shape, dtype: str) -> DeviceArray:
        array = DeviceArray(self.cuda, shape, dtype)
        self.cuda.call(self.cuda.rt.cudaMemsetAsync, array.ptr, 0, array.nbytes, self.cuda.stream.handle)
        return array

    def shape(self, value: DeviceArray) -> tuple:
        return value.shape

    # A dense array seen around `axis`: `outer` rows (the dims before it), each holding the axis's
    # entries of `inner` bytes (the dims after it). Slicing or joining along the axis copies a block
    # of every row: one 2D copy per array (latents [1, C, F, h, w] along F: C rows; frames along T: 1 row).
    @staticmethod
    def _rows(array: DeviceArray, axis: int) -> tuple[int, int]:
        outer = int(np.prod(array.shape[:axis], dtype=np.int64))
        inner = array.nbytes // (outer * array.shape[axis]) if array.nbytes else 0
        return outer, inner

    def slice(self, value: DeviceArray, axis: int, start: int, stop: int) -> DeviceArray:
        outer, inner = self._rows(value, axis)
        shape = (*value.shape[:axis], stop - start, *value.shape[axis + 1:])
        out = DeviceArray(self.cuda, shape, value.dtype)
        width = (stop - start) * inner
        copy_rows(self.cuda, out, 0, width, value, start * inner, value.shape[axis] * inner, width, outer)
        return out

    def concat(self, values: list, axis: int) -> DeviceArray:
        total = sum(v.shape[axis] for v in values)
        first = values[0]
        out = DeviceArray(self.cuda, (*first.shape[:axis], total, *first.shape[axis + 1:]), first.dtype)
        outer, inner = self._rows(first, axis)
        offset = 0
        for v in values:
            width = v.shape[axis] * inner
            copy_rows(self.cuda, out, offset, total * inner, v, 0, width, width, outer)
            offset += width
        return out


def set_weight_streaming(engine, entry: dict, source: str) -> None:
    """Keep the weight bytes the bundle's memory plan gave a streaming engine on the GPU
    (weight_streaming_budget_v2: the rest streams from host memory at every call). Only before any
    execution context of the engine exists."""
    budget = (entry.get("memory") or {}).get("weight_streaming_budget_bytes")
    if budget is None:
        return
    if not engine.streamable_weights_size:
        raise RuntimeSetupError(f"{source}: engine {entry['name']} has a weight-streaming budget but no streamable "
                                f"weights (built without BuilderFlag.WEIGHT_STREAMING): rebuild it with python -m engines")
    engine.weight_streaming_budget_v2 = int(budget)
    if engine.weight_streaming_budget_v2 != int(budget):
        raise RuntimeSetupError(f"{source}: TensorRT refused the weight-streaming budget of {int(budget)} bytes for "
                                f"engine {entry['name']} (see the TensorRT messages above)")


def numpy_name(trt, dtype) -> str:
    """The numpy name of a TensorRT DataType, as the graph contract writes dtypes. FP8, INT4, FP4 and
    E8M0 have none: numpy cannot hold them, and the contract keeps them inside the graphs (Q/DQ)."""
    names = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
             "INT32": "int32", "INT64": "int64", "BOOL": "bool"}
    for member, name in names.items():
        if dtype == getattr(trt.DataType, member, None):
            return name
    raise RuntimeSetupError(f"TensorRT data type {getattr(dtype, 'name', dtype)} has no numpy dtype (numpy has no "
                            f"FP8, INT4, FP4 or E8M0): a bundle's engine inputs and outputs are float32/float16/"
                            f"bfloat16/uint8, low-precision types stay inside the engines")


def check_engine_io(trt, plan, engines: dict, source: str) -> None:
    """Every engine's inputs and outputs have the dtype the manifest says: the runtime sizes their
    buffers from the manifest (EngineRunner), so a mismatch would read or write past them."""
    for graph in plan.graphs():
        for t in graph.inputs + graph.outputs:
            try:
                dtype = numpy_name(trt, engines[graph.name].get_tensor_dtype(t.name))
            except RuntimeSetupError as e:
                raise RuntimeSetupError(f"{source}: engine {graph.name}, tensor {t.name}: {e}") from None
            if dtype != t.dtype:
                raise RuntimeSetupError(f"{source}: engine {graph.name} has {t.name} as {dtype}, the manifest says "
                                        f"{t.dtype}: the bundle is inconsistent; rebuild it with python -m engines")
