"""A stand-in for TensorRT that runs a bundle's graphs with the torch backend's own stage functions
on the device pointers the TensorRT backend hands its execution contexts.

With it, a whole TensorRT Session (runtime/backends/tensorrt.py: bundle loading, execution contexts,
runtime configs and cache, device arrays, row copies, uploads, downloads, states, events between
stage streams) runs where TensorRT cannot (an H100 without it, or the CPU with hostcuda.py), and
its frames must be the torch backend's own: same functions, same inputs, only the plumbing differs.

    torch_model = load_torch(TorchSource(preset="tiny", seed=0), (32, 32), scale=2, clip_len=4, precision="fp32")
    trt = StandInTensorRT(torch_model)
    path = write_standin_bundle(torch_model, trt, "tiny.plan", flavour="tensorrt-rtx")
    undo = use_standin_tensorrt(trt); model = load_bundle(path)    # a TensorRTModel

The stand-in's engines compute nothing on their own: each execution context reads its inputs at the
addresses it was given (a CUDA pointer through __cuda_array_interface__, or host memory under
hostcuda.py), runs the torch stage on the stream it was enqueued on and writes its outputs at their
addresses. Its runtime cache holds the shapes its contexts have run, as TensorRT-RTX's holds the
kernels it compiled for them. Like TensorRT with user-managed context memory, a context refuses to
run without activation memory of at least its engine's device_memory_size_v2 (activation_bytes
below, written into the bundle's memory plan); it records on which streams each buffer was used, so
a check can see that a shared buffer never serves two streams.
"""
import ctypes
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from contract import graphs as c
from contract.bundle import write_bundle
from contract.chunks import dit_latent_counts

DTYPES = SimpleNamespace(FLOAT="float32", HALF="float16", BF16="bfloat16", UINT8="uint8", INT32="int32",
                         INT64="int64")
TYPESTR = {"float32": "<f4", "float16": "<f2", "uint8": "|u1", "int32": "<i4", "int64": "<i8"}
ALLOCATION = SimpleNamespace(STATIC="static", ON_PROFILE_CHANGE="on_profile_change", USER_MANAGED="user_managed")


def activation_bytes(graph: c.Graph) -> int:
    """The stand-in engine's activation need: twice its outputs at the profile's largest shapes (any
    figure would do; it differs per engine, so a buffer sized by the wrong engine is caught)."""
    sizes = {d: r["max"] for d, r in graph.dynamic.items()}
    return 2 * sum(int(np.prod(_dims(t.shape, sizes))) * np.dtype(t.dtype).itemsize for t in graph.outputs)


# ---- the bundle --------------------------------------------------------------------------------
def standin_contract(torch_model) -> c.Contract:
    """The graph contract of an export of `torch_model` (export/autoencoder.py's names and shapes)."""
    from swiftvr.reae import decoder_state_shapes, encoder_state_shapes
    spec, geom = torch_model.spec, torch_model.geom
    dtype = {"fp32": "float32", "fp16": "float16"}[spec.precision]
    (w_in, h_in), (w_out, h_out), (lw, lh) = geom.input_size, geom.output_size, geom.latent_size
    pad_w, pad_h = geom.padded_size
    counts = dit_latent_counts(spec.clip_len, spec.dit_overlap)
    n_max = spec.clip_len // 4 + 1

    def graph(name, role, inputs, outputs, dynamic, states=None, **extra):
        states = states or {}
        ins = [c.Tensor(n, tuple(s), t) for n, s, t in inputs] + \
              [c.Tensor(c.STATE_IN + n, tuple(s), dtype) for n, s in states.items()]
        outs = [c.Tensor(n, tuple(s), t) for n, s, t in outputs] + \
               [c.Tensor(c.STATE_OUT + n, tuple(s), dtype) for n, s in states.items()]
        return c.Graph(name, role, f"{name}.engine", tuple(ins), tuple(outs), dynamic, **extra)
    encoder = graph("encoder", "encoder", [("frames", ("T", h_in, w_in, 3), "uint8")],
                    [("latents", (1, 48, "T/4", lh, lw), dtype)], {"T": {"min": 4, "opt": spec.clip_len,
                                                                          "max": spec.clip_len + 4}},
                    encoder_state_shapes(1, pad_h, pad_w))
    lo, hi = min(counts), max(counts)
    frames = lo if lo == hi else (lo, hi)
    dit = graph(f"dit.f{c.frames_key(lo, hi)}", "dit", [("latents", (1, 48, "F", lh, lw), dtype)],
                [("restored", (1, 48, "F", lh, lw), dtype)], {"F": {"min": lo, "opt": spec.clip_len // 4, "max": hi}},
                blocks=(0, torch_model.model.transformer.cfg.num_layers), latent_frames=frames)
    decoder = graph("decoder", "decoder", [("latents", (1, 48, "n", lh, lw), dtype)],
                    [("frames", ("4n", h_out, w_out, 3), "uint8")], {"n": {"min": 1, "opt": spec.clip_len // 4,
                                                                           "max": n_max}},
                    decoder_state_shapes(1, lh, lw))
    return c.make_contract(encoder, {frames: [dit]}, decoder, counts, "the stand-in bundle")


def write_standin_bundle(torch_model, trt, path, flavour: str = "tensorrt-rtx", edit=None) -> Path:
    """A bundle of `torch_model`'s graphs for the stand-in: each member holds its graph's name.
    edit(manifest), when given, changes the manifest before it is written (tests: a memory plan)."""
    contract, spec = standin_contract(torch_model), torch_model.spec
    manifest = {"target": {"gpu": "stand-in", "flavour": flavour, "compute_capabilities": []},
                "builder": {"flavour": flavour, "version": trt.__version__}, "precision": spec.precision,
                "sizes": {"input_size": list(spec.input_size), "output_size": list(spec.output_size)},
                "chunk": {"clip_len": spec.clip_len, "dit_overlap": spec.dit_overlap,
                          "dit_latent_frames": dit_latent_counts(spec.clip_len, spec.dit_overlap)},
                "state": contract.to_json()[1],
                "engines": [{**c.engine_entry(g, g.file), "memory": {
                    "engine_bytes": len(g.name), "activation_bytes": activation_bytes(g),
                    "activation_estimate_bytes": activation_bytes(g), "io_bytes": 0}} for g in contract.graphs()]}
    if edit is not None:
        edit(manifest)
    with tempfile.TemporaryDirectory() as folder:
        members = []
        for g in contract.graphs():
            (Path(folder) / g.file).write_text(g.name)
            members.append((g.file, Path(folder) / g.file))
        write_bundle(path, manifest, members)
    return Path(path)


# ---- the TensorRT module ----------------------------------------------------------------------
def _dims(shape, sizes: dict) -> tuple:
    """A contract shape with its dynamic dims ("T", "T/4", "4n") evaluated."""
    out = []
    for d in shape:
        if isinstance(d, str):
            factor, name, divisor = re.fullmatch(r"(\d*)([A-Za-z]+)(?:/(\d+))?", d).groups()
            d = int(factor or 1) * sizes[name] // int(divisor or 1)
        out.append(d)
    return tuple(out)


class StandInTensorRT:
    """The part of the tensorrt / tensorrt_rtx module the TensorRT backend uses."""
    __version__ = "stand-in"
    DataType = DTYPES
    DynamicShapesKernelSpecializationStrategy = SimpleNamespace(LAZY="lazy", EAGER="eager", NONE="none")
    ExecutionContextAllocationStrategy = ALLOCATION
    Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})

    def __init__(self, torch_model):
        self.torch_model, self.torch = torch_model, torch_model.torch
        self.device = torch_model.device
        self.contract = standin_contract(torch_model)
        self.contexts_made, self.configs_used = 0, 0
        # The streams each context buffer was used on, one set per buffer. A freed buffer's address
        # comes back in a later Session: a buffer already run on is a new one when set again (a
        # Session sets all its contexts' memory before running any).
        self.buffer_streams: list[set] = []
        self.buffer_at: dict[int, set] = {}        # address -> its current buffer's streams
        trt = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, view):
                name = bytes(view).decode()
                return Engine(trt, next(g for g in trt.contract.graphs() if g.name == name))
        self.Runtime = Runtime

    def tensor_at(self, ptr: int, shape, dtype: str):
        """A torch tensor over `nbytes` at `ptr`: device memory, or host memory under hostcuda.py."""
        torch = self.torch
        if self.device.type == "cuda":
            array = SimpleNamespace(__cuda_array_interface__={"shape": tuple(shape), "typestr": TYPESTR[dtype],
                                                              "data": (ptr, False), "strides": None,
                                                              "version": 2})
            return torch.as_tensor(array, device=self.device)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(ptr)
        return torch.from_numpy(np.frombuffer(raw, np.uint8, nbytes).view(dtype).reshape(shape))

    def run(self, graph: c.Graph, inputs: dict) -> dict:
        """The graph's outputs from its inputs, with the torch backend's stage functions."""
        m = self.torch_model
        state = {n[len(c.STATE_IN):]: v for n, v in inputs.items() if n.startswith(c.STATE_IN)}
        with self.torch.inference_mode():
            if graph.role == "dit":
                return {"restored": m.dit_stage(inputs["latents"])}
            stage = m.encode_stage if graph.role == "encoder" else m.decode_stage
            first, state = stage(inputs["frames" if graph.role == "encoder" else "latents"], state)
        return {graph.outputs[0].name: first, **{c.STATE_OUT + n: v for n, v in state.items()}}


class RuntimeCache:
    def __init__(self):
        self.shapes = set()

    def deserialize(self, blob) -> bool:
        blob = bytes(blob)
        if not blob.startswith(b"stand-in:"):
            return False
        self.shapes |= {s for s in blob[9:].decode().split(";") if s}
        return True

    def serialize(self) -> bytes:
        return ("stand-in:" + ";".join(sorted(self.shapes))).encode()


class RuntimeConfig:
    def __init__(self):
        self.cache, self.dynamic_shapes_kernel_specialization_strategy = None, "lazy"
        self.allocation = ALLOCATION.STATIC

    def create_runtime_cache(self):
        return RuntimeCache()

    def set_runtime_cache(self, cache) -> bool:
        self.cache = cache
        return True

    def set_execution_context_allocation_strategy(self, strategy) -> None:
        self.allocation = strategy


class Engine:
    streamable_weights_size = 0               # the stand-in has no weights to stream (tests patch it)

    def __init__(self, trt: StandInTensorRT, graph: c.Graph):
        self.trt, self.graph = trt, graph
        self.device_memory_size_v2 = activation_bytes(graph)
        self.weight_streaming_budget_v2 = self.streamable_weights_size   # TensorRT's default: nothing streamed

    def create_runtime_config(self):
        return RuntimeConfig()

    def create_execution_context(self, config=ALLOCATION.STATIC):
        """With a runtime config (TensorRT-RTX) or an allocation strategy (full TensorRT), as TensorRT's."""
        self.trt.contexts_made += 1
        if isinstance(config, RuntimeConfig):
            self.trt.configs_used += 1
            return Context(self, config, config.allocation)
        return Context(self, None, config)

    def get_tensor_dtype(self, name: str) -> str:
        return self.graph.tensor(name).dtype

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(-1 if isinstance(d, str) else d for d in self.graph.tensor(name).shape)


class Context:
    def __init__(self, engine: Engine, config, allocation):
        self.engine, self.graph, self.config, self.allocation = engine, engine.graph, config, allocation
        self.shapes, self.addresses = {}, {}
        self.memory = None                    # (address, bytes) given with set_device_memory

    def set_device_memory(self, memory: int, size: int) -> None:
        if self.allocation != ALLOCATION.USER_MANAGED:
            raise RuntimeError(f"{self.graph.name}: set_device_memory on a context not made USER_MANAGED")
        if size < self.engine.device_memory_size_v2:
            raise RuntimeError(f"{self.graph.name}: {size} bytes of context memory, the engine needs "
                               f"{self.engine.device_memory_size_v2}")
        self.memory = (int(memory), int(size))
        trt = self.engine.trt
        if trt.buffer_at.get(self.memory[0], {None}):   # a new address, or one used by an earlier Session
            trt.buffer_at[self.memory[0]] = set()
            trt.buffer_streams.append(trt.buffer_at[self.memory[0]])
        self.streams = trt.buffer_at[self.memory[0]]

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def set_tensor_address(self, name: str, ptr) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def _sizes(self) -> dict:
        sizes = {}
        for t in self.graph.inputs:
            for d, n in zip(t.shape, self.shapes.get(t.name, ())):
                if isinstance(d, str):
                    sizes[d] = n
        return sizes

    def get_tensor_shape(self, name: str) -> tuple:
        return self.shapes[name] if name in self.shapes else _dims(self.graph.tensor(name).shape, self._sizes())

    def execute_async_v3(self, stream_handle) -> bool:
        trt, torch = self.engine.trt, self.engine.trt.torch
        if self.allocation == ALLOCATION.USER_MANAGED:   # TensorRT fails the enqueue without its memory
            if self.memory is None:
                return False
            self.streams.add(int(stream_handle))
        tensors = {t.name: trt.tensor_at(self.addresses[t.name], self.get_tensor_shape(t.name), t.dtype)
                   for t in self.graph.inputs + self.graph.outputs}
        if self.config is not None:          # "compiled for this shape": what a runtime cache would keep
            self.config.cache.shapes.add(f"{self.graph.name}{sorted(self._sizes().items())}")
        if trt.device.type == "cuda":
            stream = torch.cuda.ExternalStream(int(stream_handle), device=trt.device)
            with torch.cuda.stream(stream):
                self._compute(tensors)
        else:
            self._compute(tensors)
        return True

    def _compute(self, tensors: dict) -> None:
        out = self.engine.trt.run(self.graph, {t: tensors[t] for t in self.graph.input_names})
        for name in self.graph.output_names:
            tensors[name].copy_(out[name].reshape(tensors[name].shape))


def use_standin_tensorrt(trt: StandInTensorRT):
    """Make runtime/backends/tensorrt.py load bundles with `trt`; returns a function that undoes it."""
    from ..backends import tensorrt
    before = tensorrt.import_tensorrt
    tensorrt.import_tensorrt = lambda flavour: trt
    return lambda: setattr(tensorrt, "import_tensorrt", before)
