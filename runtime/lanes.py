"""Lanes: where each stage's work runs, in submission order, and how long it took.

The orchestrator (runtime/session.py) submits a chunk's work stage by stage without waiting; a
lane decides when it actually runs:

  * InlineLane   runs it at once on the calling thread: no overlap, the simplest baseline.
  * ThreadLane   one worker thread per stage; values between lanes are Futures. Encode of chunk
                 k+1, DiT of chunk k and decode of chunk k-1 then run at the same time (ONNX
                 Runtime and torch release the GIL inside their kernels).
  * CudaLane     one CUDA stream per stage (or one stream for all: no overlap); values carry the
                 event after which they are valid (OnDevice) and consumers wait on it on the GPU.
                 It is written once for both CUDA backends, over a `CudaDevice`: how streams and
                 events are made and used (runtime/backends/cuda.py's Cuda for TensorRT,
                 runtime/backends/torch/model.py's TorchCuda for torch).

Every lane has the same four methods: submit(fn, *args, outputs=1, timed=True), wait(value),
ready(value), close(). Work only ever waits for work submitted before it, and each lane runs in
submission order, so the lanes cannot deadlock.
"""
import statistics
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ContextManager, Protocol

STAGES = ("upload", "encode", "dit", "decode", "download")


class StageStats:
    """Per-stage durations in milliseconds. CUDA lanes add (start, end) event pairs that are read
    once the chunk is known to be done (reading them earlier would stall the GPU pipeline)."""

    def __init__(self):
        self.ms: dict[str, list[float]] = {}
        self._pending: list = []
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.ms.setdefault(stage, []).append(seconds * 1e3)

    def add_events(self, stage: str, elapsed_ms, done) -> None:
        """`elapsed_ms()` gives the stage's time once `done()` says its end event has completed."""
        with self._lock:
            self._pending.append((stage, elapsed_ms, done))

    def resolve(self) -> None:
        """Read the CUDA timings whose work has finished (the events are then let go)."""
        with self._lock:
            waiting = []
            for stage, elapsed_ms, done in self._pending:
                if done():
                    self.ms.setdefault(stage, []).append(elapsed_ms())
                else:
                    waiting.append((stage, elapsed_ms, done))
            self._pending = waiting

    def reset(self) -> None:
        with self._lock:
            self.ms, self._pending = {}, []

    def summary(self, skip: int = 0) -> dict:
        """{stage: {count, median_ms, mean_ms, p90_ms, max_ms}}, ignoring each stage's first `skip`."""
        self.resolve()
        out = {}
        for stage in [s for s in STAGES if s in self.ms] + [s for s in self.ms if s not in STAGES]:
            values = self.ms[stage][skip:] or self.ms[stage]
            ordered = sorted(values)
            out[stage] = {"count": len(values), "median_ms": round(statistics.median(values), 3),
                          "mean_ms": round(statistics.fmean(values), 3),
                          "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
                          "max_ms": round(ordered[-1], 3)}
        return out


def _run_timed(stats: StageStats, stage: str, fn, args, timed: bool):
    start = time.perf_counter()
    out = fn(*args)
    if timed:
        stats.add(stage, time.perf_counter() - start)
    return out


class InlineLane:
    def __init__(self, stage: str, stats: StageStats):
        self.stage, self.stats = stage, stats

    def submit(self, fn, *args, outputs: int = 1, timed: bool = True):
        return _run_timed(self.stats, self.stage, fn, args, timed)

    def wait(self, value):
        return value

    def ready(self, value) -> bool:
        return True

    def close(self) -> None:
        pass


def _resolve(value):
    return value.result() if isinstance(value, Future) else value


def _part(future: Future, index: int) -> Future:
    """A Future for element `index` of the tuple `future` will hold."""
    part = Future()

    def done(f: Future):
        if f.exception() is not None:
            part.set_exception(f.exception())
        else:
            part.set_result(f.result()[index])
    future.add_done_callback(done)
    return part


class ThreadLane:
    def __init__(self, stage: str, stats: StageStats):
        self.stage, self.stats = stage, stats
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"swiftvr-{stage}")

    def submit(self, fn, *args, outputs: int = 1, timed: bool = True):
        future = self.pool.submit(self._run, fn, args, timed)
        return future if outputs == 1 else tuple(_part(future, i) for i in range(outputs))

    def _run(self, fn, args, timed):
        args = [_resolve(a) for a in args]     # waiting for inputs is not this stage's time
        return _run_timed(self.stats, self.stage, fn, args, timed)

    def wait(self, value):
        return _resolve(value)

    def ready(self, value) -> bool:
        return not isinstance(value, Future) or value.done()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def cpu_lanes(overlap: bool, stats: StageStats) -> dict:
    lane = ThreadLane if overlap else InlineLane
    return {stage: lane(stage, stats) for stage in STAGES}


# ---- CUDA ----------------------------------------------------------------------------------------
class CudaDevice(Protocol):
    """Streams and events of one CUDA device, as a CudaLane uses them."""

    def new_stream(self) -> Any: ...
    def on(self, stream) -> ContextManager: ...                  # make `stream` current for the work
    def record(self, stream, timing: bool) -> Any: ...           # -> an event recorded on `stream`
    def wait_event(self, stream, event) -> None: ...             # `stream` waits for `event`, on the GPU
    def used_on(self, value, stream) -> None: ...                # the arrays in `value` are used on `stream`
    def elapsed_ms(self, start, end) -> float: ...
    def done(self, event) -> bool: ...
    def synchronize(self, event_or_stream) -> None: ...          # the host waits


class OnDevice:
    """A value computed on a CUDA stream: valid on the GPU once `event` has completed."""
    __slots__ = ("value", "event")

    def __init__(self, value, event):
        self.value, self.event = value, event


class CudaLane:
    def __init__(self, stage: str, stats: StageStats, device: CudaDevice, stream):
        self.stage, self.stats, self.device, self.stream = stage, stats, device, stream

    def _use(self, value):
        """Make this stream wait for `value` and tell the allocator it is used here."""
        if isinstance(value, OnDevice):
            self.device.wait_event(self.stream, value.event)
            value = value.value
        self.device.used_on(value, self.stream)
        return value

    def submit(self, fn, *args, outputs: int = 1, timed: bool = True):
        device = self.device
        args = [self._use(a) for a in args]
        with device.on(self.stream):
            start = device.record(self.stream, timing=True) if timed else None
            out = fn(*args)
            end = device.record(self.stream, timing=timed)
        if timed:
            self.stats.add_events(self.stage, lambda: device.elapsed_ms(start, end), lambda: device.done(end))
        return OnDevice(out, end) if outputs == 1 else tuple(OnDevice(o, end) for o in out)

    def wait(self, value):
        if isinstance(value, OnDevice):
            self.device.synchronize(value.event)
            return value.value
        return value

    def ready(self, value) -> bool:
        return not isinstance(value, OnDevice) or self.device.done(value.event)

    def close(self) -> None:
        self.device.synchronize(self.stream)


def cuda_lanes(device: CudaDevice, overlap: bool, stats: StageStats) -> dict:
    """A stream per stage (overlap), or one stream for all: every stage after the other."""
    if overlap:
        return {stage: CudaLane(stage, stats, device, device.new_stream()) for stage in STAGES}
    stream = device.new_stream()
    return {stage: CudaLane(stage, stats, device, stream) for stage in STAGES}
