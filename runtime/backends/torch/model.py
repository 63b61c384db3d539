"""The torch backend's model and per-stream kernels.

TorchModel loads (or is handed) a swiftvr SwiftVR, applies TorchOptions (options.py) and makes the
three stage functions, compiled when asked; TorchKernels is one stream's Kernels (runtime/backend.py)
over them, with CUDA graphs (cudagraphs.py) when asked; TorchCuda is the CudaDevice its CUDA lanes
(runtime/lanes.py) run on.
"""
import threading
from dataclasses import dataclass

import numpy as np

from swiftvr.config import PRECISION_DTYPES as PRECISIONS

from ...backend import LoadedModel
from ...errors import RuntimeSetupError, import_or_explain
from ...lanes import StageStats, cpu_lanes, cuda_lanes
from ...nest import flatten
from ...spec import ModelSpec
from .cudagraphs import CudaGraphStage
from .options import TorchOptions, apply_options, attention_context


def import_torch():
    return import_or_explain("torch", "the torch backend",
                             "pip install torch safetensors   (a CUDA build of torch for GPUs)")


def torch_dtype(torch, precision: str):
    if precision not in PRECISIONS:
        raise RuntimeSetupError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return getattr(torch, PRECISIONS[precision])


@dataclass(frozen=True)
class TorchSource:
    """Which weights: a release checkpoint folder, or a preset with seeded random weights."""
    checkpoint: str | None = None
    preset: str | None = None
    seed: int | None = None

    def describe(self) -> str:
        return self.checkpoint or f"preset {self.preset}, random weights seed {self.seed}"

    def load(self, dtype, device):
        if self.checkpoint:
            from swiftvr.checkpoint import CheckpointError, load_checkpoint
            try:
                return load_checkpoint(self.checkpoint, dtype, device)
            except CheckpointError as e:
                raise RuntimeSetupError(str(e)) from None
        if self.preset is None or self.seed is None:
            raise RuntimeSetupError("the torch backend needs --checkpoint DIR, or --preset NAME with "
                                    "--random-weights SEED")
        from swiftvr.random_checkpoint import random_model
        try:
            return random_model(self.preset, self.seed, dtype, device)
        except ValueError as e:
            raise RuntimeSetupError(str(e)) from None


def _canonical_strides(torch, state):
    """The carried ReAE state with plain contiguous strides. Each entry is a one-frame slice of a
    chunk's activation, so its (meaningless) stride over the size-1 batch dims depends on the
    chunk's length; compiled code guards on every stride and would compile the stage again."""
    if state is None:
        return None
    return {name: t if t.stride() == torch.empty(t.shape, device="meta").stride()
            else t.clone(memory_format=torch.contiguous_format) for name, t in state.items()}


def _call_block(block, *args):
    """One DiT block; compiled once and reused by all blocks (their parameters are graph inputs)."""
    return block(*args)


class TorchModel(LoadedModel):
    def __init__(self, source: TorchSource, input_size: tuple[int, int], *, scale: float | None = None,
                 output_size: tuple[int, int] | None = None, clip_len: int = 24, dit_overlap: int = 0,
                 precision: str | None = None, device: str | None = None, options: TorchOptions = TorchOptions(),
                 model=None):
        """model: an already-loaded swiftvr SwiftVR on `device` in `precision` to use instead of
        loading `source` (runtime/bench/ shares one across runs). Its modules are changed in place
        to match `options`, so it must not serve another TorchModel with other options at once."""
        torch = import_torch()
        from contract.sizes import frame_geometry

        self.torch = torch
        if device is None:
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeSetupError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        precision = precision or ("bf16" if self.cuda else "fp32")
        self.dtype = torch_dtype(torch, precision)
        options.check(self.cuda)
        self.options = options
        self.geom = frame_geometry(tuple(input_size), tuple(output_size) if output_size else None, scale)
        self.model = source.load(self.dtype, self.device) if model is None else model
        apply_options(self.model, options)
        if options.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True      # process-wide: cuDNN times each conv shape once
        with torch.inference_mode():
            self.cond = self.model.transformer.conditioning(self.model.prompt_emb)
        self.grid_plans, self._plans_lock = {}, threading.Lock()
        self._stage_functions()
        if self.cuda:
            # Weights and conditioning were made on the default stream; the stage streams do not wait for it.
            torch.cuda.synchronize(self.device)
        described = source.describe() + (f"; {options.describe()}" if options.changed() else "")
        self.spec = ModelSpec(source=described, backend="torch", device=str(self.device),
                              precision=precision, input_size=self.geom.input_size,
                              output_size=self.geom.output_size, clip_len=clip_len, dit_overlap=dit_overlap,
                              dit_latent_frames=None)
        self.spec.check()

    # ---- the three stages ----------------------------------------------------------------------
    def _stage_functions(self) -> None:
        """encode_stage / dit_stage / decode_stage: the functions TorchKernels runs (or captures)."""
        torch, mode = self.torch, self.options.compile
        self.encode_stage, self.decode_stage, self._call_block = self._encode, self._decode, None
        if mode:
            import torch._dynamo
            # One compiled block per (token grid, window layout) and one ReAE graph per chunk shape:
            # several resolutions and chunk kinds go past dynamo's default of 8 recompiles per function.
            for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
            self._call_block = torch.compile(_call_block, mode=mode, dynamic=False)
            encode = torch.compile(self._encode, mode=mode, dynamic=False)
            decode = torch.compile(self._decode, mode=mode, dynamic=False)
            self.encode_stage = lambda frames, state: encode(frames, _canonical_strides(torch, state))
            self.decode_stage = lambda latents, state: decode(latents, _canonical_strides(torch, state))

    def _encode(self, frames, state):
        from swiftvr.pipeline import preprocess
        x = preprocess(frames, self.geom, self.dtype)
        lq, state = self.model.reae.encode(x, state)
        return lq.transpose(1, 2), state                 # DiT layout [1, 48, n, h, w]

    def _decode(self, latents, state):
        from swiftvr.pipeline import to_uint8
        frames, state = self.model.reae.decode(latents.transpose(1, 2), state)
        return to_uint8(frames, self.geom), state

    def dit_stage(self, latents):
        # With compile, each block runs through the one compiled _call_block (same operations).
        with attention_context(self.options):
            return self.model.transformer.restore(latents, self.cond, self.grid_plan(latents.shape),
                                                  call=self._call_block)

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

    def kernels(self) -> "TorchKernels":
        return TorchKernels(self)

    def lanes(self, overlap: bool, stats: StageStats) -> dict:
        if not self.cuda:
            return cpu_lanes(overlap, stats)
        return cuda_lanes(TorchCuda(self.torch, self.device), overlap, stats)

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
    """One stream's stage functions. Tensors stay on the model's device between stages. With
    cuda_graphs each stage is a CudaGraphStage of its own: graphs and their buffers belong to one
    Session, so Sessions in other threads never share them."""

    def __init__(self, model: TorchModel):
        self.m, self.torch = model, model.torch
        self.in_transit = []     # (pinned host tensor, event): kept alive until its upload is done
        self.stages = [model.encode_stage, model.dit_stage, model.decode_stage]
        if model.options.cuda_graphs:
            self.stages = [CudaGraphStage(fn, model.device) for fn in self.stages]
        self._encode, self._dit, self._decode = self.stages

    @property
    def graph_captures(self) -> int:
        """CUDA graphs captured so far by this stream's stages."""
        return sum(getattr(stage, "captures", 0) for stage in self.stages)

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
        with self.torch.inference_mode():
            return self._encode(frames, state)

    def dit(self, latents):
        with self.torch.inference_mode():
            return self._dit(latents)

    def decode(self, latents, state):
        with self.torch.inference_mode():
            return self._decode(latents, state)

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

    def close(self) -> None:
        self.in_transit = []     # the lanes have finished: pinned memory goes back to torch's cache


class TorchCuda:
    """The CudaDevice (runtime/lanes.py) of torch's CUDA streams and events on one device."""

    def __init__(self, torch, device):
        self.torch, self.device = torch, device

    def new_stream(self):
        return self.torch.cuda.Stream(self.device)

    def on(self, stream):
        return self.torch.cuda.stream(stream)

    def record(self, stream, timing: bool):
        event = self.torch.cuda.Event(enable_timing=timing)
        event.record(stream)
        return event

    def wait_event(self, stream, event) -> None:
        stream.wait_event(event)

    def used_on(self, value, stream) -> None:
        """Tell the caching allocator that the tensors in `value` are used on `stream`."""
        for tensor in flatten(value)[0]:
            if isinstance(tensor, self.torch.Tensor) and tensor.is_cuda:
                tensor.record_stream(stream)

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end)

    def done(self, event) -> bool:
        return event.query()

    def synchronize(self, event_or_stream) -> None:
        event_or_stream.synchronize()
