"""The ONNX Runtime backend: runs an export folder, or a `cpu` bundle (which holds the ONNX graphs).

CPU by default; CUDA where onnxruntime-gpu is installed (`--device cuda`, or automatically when its
CUDAExecutionProvider is there). The stages are contract/chain.py's GraphChain over BoundSessions:
values between stages are OrtValues bound with IOBinding, so the boundary states stay where the
graphs run. The array ops (latent prefix and history; slices of a sliced ReAE) go through numpy:
free on the CPU (OrtValue and numpy share memory there), a copy through the host on CUDA.

One InferenceSession per graph, shared by every Session: ORT's run() may be called from several
threads at once. Per-stream state (boundary states, history) lives in the Session.
"""
import numpy as np

from contract.chain import GraphChain
from contract.onnxruntime import bundle_session, session_options

from ..backend import LoadedModel
from ..errors import MissingPackageError, RuntimeSetupError, import_or_explain
from ..lanes import StageStats, cpu_lanes
from ..spec import plan_from_meta, spec_from_meta


def import_onnxruntime():
    return import_or_explain("onnxruntime", "the ONNX Runtime backend",
                             "pip install onnxruntime   (or onnxruntime-gpu for CUDA)")


class OnnxModel(LoadedModel):
    def __init__(self, meta: dict, load_graph, source: str, *, device: str | None = None,
                 threads: int | None = None, meta_file: str | None = None):
        """meta: export.json (meta_file: its path, for errors) or a cpu bundle's manifest.
        load_graph(graph (contract.graphs.Graph), session_options, providers) -> InferenceSession:
        from a file or bundle bytes."""
        ort = import_onnxruntime()
        self.ort = ort
        available = ort.get_available_providers()
        if device is None:
            device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise MissingPackageError("ONNX Runtime on CUDA", "onnxruntime (with CUDAExecutionProvider)",
                                          "pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
            self.device_type, self.device_id = "cuda", int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        elif device == "cpu":
            self.device_type, self.device_id, providers = "cpu", 0, ["CPUExecutionProvider"]
        else:
            raise RuntimeSetupError(f"ONNX Runtime runs on 'cpu' or 'cuda[:N]', not {device!r}")
        self.spec = spec_from_meta(meta, source, "onnxruntime",
                                   self.device_type + (f":{self.device_id}" if self.device_type == "cuda" else ""))
        if self.spec.precision == "bf16":
            raise RuntimeSetupError(f"{source} is bf16; ONNX Runtime's kernels (and numpy) lack bf16. Export "
                                    f"fp32 or fp16 for ONNX Runtime, or run bf16 with TensorRT or torch")
        # encoder, one chain of DiT graphs per latent-frame count the chunk protocol uses, decoder
        self.plan = plan_from_meta(meta, meta_file or source)
        self.sessions = {graph.name: load_graph(graph, session_options(ort, threads), providers)
                         for graph in self.plan.graphs()}
        self.latent_dtype = np.dtype(self.plan.encoder.tensor("latents").dtype)

    def kernels(self):
        return OnnxKernels(self)

    def lanes(self, overlap: bool, stats: StageStats) -> dict:
        return cpu_lanes(overlap, stats)


class BoundSessions:
    """contract.chain's GraphRunner over the model's sessions: values are OrtValues on the model's
    device, bound with IOBinding, so the boundary states stay where the graphs run."""

    def __init__(self, model: OnnxModel):
        self.sessions, self.ort = model.sessions, model.ort
        self.device_type, self.device_id = model.device_type, model.device_id

    def value(self, array: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device_type, self.device_id)

    def run(self, graph, inputs: dict) -> dict:
        session = self.sessions[graph.name]
        binding = session.io_binding()
        for name in graph.input_names:
            binding.bind_ortvalue_input(name, inputs[name])
        for name in graph.output_names:
            binding.bind_output(name, self.device_type, self.device_id)
        session.run_with_iobinding(binding)
        return dict(zip(graph.output_names, binding.get_outputs()))

    def zeros(self, shape, dtype: str):
        return self.value(np.zeros(shape, dtype))

    def shape(self, value) -> tuple:
        return tuple(value.shape())

    # Array ops through numpy: free on the CPU (an OrtValue there is a numpy array's memory), a copy
    # through the host on CUDA (onnxruntime-gpu: small latents; frames only when the ReAE is sliced).
    def slice(self, value, axis: int, start: int, stop: int):
        return self.value(value.numpy()[(slice(None),) * axis + (slice(start, stop),)])

    def concat(self, values: list, axis: int):
        return self.value(np.concatenate([v.numpy() for v in values], axis=axis))


class OnnxKernels:
    def __init__(self, model: OnnxModel):
        self.m = model
        self.graphs = BoundSessions(model)
        # The stages are the contract's graph chain (contract/chain.py) over the bound sessions.
        chain = GraphChain(model.plan, self.graphs)
        self.zero_state, self.encode, self.dit, self.decode = chain.zero_state, chain.encode, chain.dit, chain.decode

    def host_frames(self, count: int) -> np.ndarray:
        width, height = self.m.spec.input_size
        return np.empty((count, height, width, 3), np.uint8)

    def upload(self, host: np.ndarray):
        return self.graphs.value(host)

    def download(self, frames, start: int, count: int) -> np.ndarray:
        return np.array(frames.numpy()[start:start + count])      # a copy the caller owns

    def finish(self, host: np.ndarray) -> np.ndarray:
        return host

    def concat(self, a, b):
        return self.graphs.concat([a, b], 2)

    def take_last(self, x, n: int):
        f = x.shape()[2]
        return x if n >= f else self.graphs.slice(x, 2, f - n, f)

    def zeros(self, like, n: int):
        shape = list(like.shape())
        shape[2] = n
        return self.graphs.zeros(shape, self.m.latent_dtype)

    def close(self) -> None:
        pass             # nothing of its own: OrtValues go with their last reference


def load_export_folder(path, *, device=None, threads=None) -> OnnxModel:
    from pathlib import Path
    from contract.graphs import read_json
    folder = Path(path)
    ort = import_onnxruntime()
    meta = read_json(folder / "export.json", "export.json")

    def load(graph, options, providers):
        return ort.InferenceSession(str(folder / graph.file), options, providers=providers)
    return OnnxModel(meta, load, str(folder), device=device, threads=threads, meta_file=str(folder / "export.json"))


def load_cpu_bundle(bundle, *, device=None, threads=None) -> OnnxModel:
    """From an open contract.bundle.Bundle of the `cpu` target: graphs and their external data are
    handed to ONNX Runtime from the mapped file, nothing is unpacked to disk."""
    manifest = bundle.manifest
    files_of = {e["member"]: e["files"] for e in manifest["engines"]}

    def load(graph, options, providers):              # graph.file: its member
        return bundle_session(bundle, graph.file, files_of[graph.file], options, providers)
    return OnnxModel(manifest, load, str(bundle.path), device=device, threads=threads)
