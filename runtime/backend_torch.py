"""The torch backend: the swiftvr model itself, on CUDA when there is one, else on the CPU.

It is the reference the other backends are checked against, and the GPU path where TensorRT cannot
run (TensorRT-RTX has no Hopper target; full TensorRT may not be installable). The stage functions
are swiftvr.pipeline's own (preprocess, reae.encode, transformer.restore, reae.decode, to_uint8),
so on the CPU in fp32 its frames are bit-identical to swiftvr.pipeline.Restorer's.

torch is imported here only, when a torch model is loaded: the rest of the runtime runs without it.
"""
import threading
from dataclasses import dataclass

import numpy as np

from .backend import LoadedModel
from .errors import MissingPackageError, RuntimeSetupError
from .lanes import STAGES, StageStats, cpu_lanes
from .spec import ModelSpec

PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def import_torch():
    try:
        import torch
    except ImportError as e:
        raise MissingPackageError("the torch backend", "torch",
                                  "pip install torch safetensors   (a CUDA build of torch for GPUs)", e) from None
    return torch


@dataclass(frozen=True)
class TorchSource:
    """Which weights: a release checkpoint folder, or a preset with seeded random weights."""
    checkpoint: str | None = None
    preset: str | None = None
    seed: int | None = None

    def describe(self) -> str:
        return self.checkpoint or f"preset {self.preset}, random weights seed {self.seed}"


class TorchModel(LoadedModel):
    def __init__(self, source: TorchSource, input_size: tuple[int, int], *, scale: float | None = None,
                 output_size: tuple[int, int] | None = None, clip_len: int = 24, dit_overlap: int = 0,
                 precision: str | None = None, device: str | None = None):
        torch = import_torch()
        from swiftvr.sizes import frame_geometry

        self.torch = torch
        if device is None:
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeSetupError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        precision = precision or ("bf16" if self.cuda else "fp32")
        if precision not in PRECISIONS:
            raise RuntimeSetupError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.dtype = getattr(torch, PRECISIONS[precision])
        self.geom = frame_geometry(tuple(input_size), tuple(output_size) if output_size else None, scale)
        self.model = self._load(source)
        with torch.inference_mode():
            self.cond = self.model.transformer.conditioning(self.model.prompt_emb)
        self.grid_plans, self._plans_lock = {}, threading.Lock()
        if self.cuda:
            # Weights and conditioning were made on the default stream; the stage streams do not wait for it.
            torch.cuda.synchronize(self.device)
        self.spec = ModelSpec(source=source.describe(), backend="torch", device=str(self.device),
                              precision=precision, input_size=self.geom.input_size,
                              output_size=self.geom.output_size, clip_len=clip_len, dit_overlap=dit_overlap,
                              dit_latent_frames=None)
        self.spec.check()

    def _load(self, source: TorchSource):
        if source.checkpoint:
            from swiftvr.checkpoint import CheckpointError, load_checkpoint
            try:
                return load_checkpoint(source.checkpoint, self.dtype, self.device)
            except CheckpointError as e:
                raise RuntimeSetupError(str(e)) from None
        if source.preset is None or source.seed is None:
            raise RuntimeSetupError("the torch backend needs --checkpoint DIR, or --preset NAME with "
                                    "--random-weights SEED")
        from swiftvr.random_checkpoint import random_model
        try:
            return random_model(source.preset, source.seed, self.dtype, self.device)
        except ValueError as e:
            raise RuntimeSetupError(str(e)) from None

    def grid_plan(self, latent_shape):
        transformer = self.model.transformer
        grid = transformer.token_grid(latent_shape)
        with self._plans_lock:
            if grid not in self.grid_plans:
                # RoPE offset 0 for every call: attention sees only position differences (see
                # swiftvr/pipeline.py), and the exported graphs do the same.
                plan = transformer.grid_plan(grid, 0, self.device)
                if self.cuda:      # made on this Session's stream, shared with every other Session's
                    self.torch.cuda.current_stream(self.device).synchronize()
                self.grid_plans[grid] = plan
            return self.grid_plans[grid]

    def kernels(self):
        return TorchKernels(self)

    def lanes(self, overlap: bool, stats: StageStats) -> dict:
        if not self.cuda:
            return cpu_lanes(overlap, stats)
        if overlap:
            return {stage: TorchCudaLane(stage, stats, self.torch.cuda.Stream(self.device)) for stage in STAGES}
        stream = self.torch.cuda.Stream(self.device)     # one stream: every stage after the other
        return {stage: TorchCudaLane(stage, stats, stream) for stage in STAGES}

    def memory(self) -> dict:
        if not self.cuda:
            return super().memory()
        cuda = self.torch.cuda
        return {"device": f"{cuda.get_device_name(self.device)} ({self.device})",
                "in_use_bytes": cuda.memory_allocated(self.device),
                "peak_bytes": cuda.max_memory_allocated(self.device)}

    def reset_peak_memory(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)


class TorchKernels:
    """One stream's stage functions. Tensors stay on the model's device between stages."""

    def __init__(self, model: TorchModel):
        self.m, self.torch = model, model.torch
        self.in_transit = []     # (pinned host tensor, event): kept alive until its upload is done

    def host_frames(self, count: int) -> np.ndarray:
        width, height = self.m.geom.input_size
        if not self.m.cuda:
            return np.empty((count, height, width, 3), np.uint8)
        return self.torch.empty((count, height, width, 3), dtype=self.torch.uint8, pin_memory=True).numpy()

    def upload(self, host: np.ndarray):
        frames = self.torch.from_numpy(host)
        if not self.m.cuda:
            return frames
        device_frames = frames.to(self.m.device, non_blocking=True)
        done = self.torch.cuda.Event()
        done.record()
        self.in_transit = [(h, e) for h, e in self.in_transit if not e.query()] + [(host, done)]
        return device_frames

    def zero_state(self, which: str):
        return None      # the ReAE starts a stream from zero states itself

    def encode(self, frames, state):
        from swiftvr.pipeline import preprocess
        with self.torch.inference_mode():
            x = preprocess(frames, self.m.geom, self.m.dtype)
            lq, state = self.m.model.reae.encode(x, state)
            return lq.transpose(1, 2), state                 # DiT layout [1, 48, n, h, w]

    def dit(self, latents):
        with self.torch.inference_mode():
            return self.m.model.transformer.restore(latents, self.m.cond, self.m.grid_plan(latents.shape))

    def decode(self, latents, state):
        from swiftvr.pipeline import to_uint8
        with self.torch.inference_mode():
            frames, state = self.m.model.reae.decode(latents.transpose(1, 2), state)
            return to_uint8(frames, self.m.geom), state

    def download(self, frames, start: int, count: int):
        part = frames[start:start + count]
        if not self.m.cuda:
            return part.clone()
        host = self.torch.empty(part.shape, dtype=self.torch.uint8, pin_memory=True)
        host.copy_(part, non_blocking=True)
        return host

    def finish(self, host) -> np.ndarray:
        return host.numpy()

    def concat(self, a, b):
        return self.torch.cat([a, b], dim=2)

    def take_last(self, x, n: int):
        return x if n >= x.shape[2] else x[:, :, -n:]

    def zeros(self, like, n: int):
        return self.torch.zeros_like(like[:, :, :1]).expand(-1, -1, n, -1, -1)


class OnDevice:
    """A value computed on a CUDA stream: valid on the GPU once `event` has completed."""
    __slots__ = ("value", "event")

    def __init__(self, value, event):
        self.value, self.event = value, event


class TorchCudaLane:
    """A stage on its own CUDA stream (or on a stream shared by all stages: no overlap)."""

    def __init__(self, stage: str, stats: StageStats, stream):
        import torch
        self.torch, self.stage, self.stats, self.stream = torch, stage, stats, stream

    def _use(self, value):
        """Make this stream wait for `value` and tell the caching allocator it is used here."""
        if not isinstance(value, OnDevice):
            return value
        self.stream.wait_event(value.event)
        _record_stream(self.torch, value.value, self.stream)
        return value.value

    def submit(self, fn, *args, outputs: int = 1, timed: bool = True):
        cuda = self.torch.cuda
        args = [self._use(a) for a in args]
        with cuda.stream(self.stream):
            start = cuda.Event(enable_timing=True) if timed else None
            if timed:
                start.record()
            out = fn(*args)
            end = cuda.Event(enable_timing=timed)
            end.record()
        if timed:
            self.stats.add_events(self.stage, lambda: start.elapsed_time(end), end.query)
        return OnDevice(out, end) if outputs == 1 else tuple(OnDevice(o, end) for o in out)

    def wait(self, value):
        if isinstance(value, OnDevice):
            value.event.synchronize()
            return value.value
        return value

    def ready(self, value) -> bool:
        return not isinstance(value, OnDevice) or value.event.query()

    def close(self) -> None:
        self.stream.synchronize()


def _record_stream(torch, value, stream) -> None:
    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            value.record_stream(stream)
    elif isinstance(value, (tuple, list)):
        for v in value:
            _record_stream(torch, v, stream)
    elif isinstance(value, dict):
        for v in value.values():
            _record_stream(torch, v, stream)
