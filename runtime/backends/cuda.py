"""CUDA for the TensorRT backend, through cuda-python (`cuda.bindings.runtime`).

Only what the pipeline needs: streams, events, stream-ordered device memory (cudaMallocAsync),
page-locked host memory (cudaMallocHost) and async copies. Every call's error code is checked.

`Cuda` is also the CudaDevice a TensorRT Session's CudaLanes (runtime/lanes.py) run on.

Device arrays are allocated on the stream of the stage that makes them and used on others. When
Python drops one, an event is recorded on every stream that used it, and the memory is given back
(cudaFreeAsync) once those events have completed: no stream ever waits for a free, and memory in
use stays bounded by the chunks in flight.
"""
import ctypes
import math
import threading

import numpy as np

from ..errors import MissingPackageError, RuntimeSetupError
from ..nest import flatten

ITEMSIZE = {"uint8": 1, "int8": 1, "bool": 1, "float16": 2, "bfloat16": 2, "float32": 4, "int32": 4, "int64": 8}


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        try:                                     # cuda-python before 12.6 named it cuda.cudart
            from cuda import cudart
        except ImportError:
            raise MissingPackageError("the TensorRT backend (device memory and CUDA streams)",
                                      "cuda.bindings (cuda-python)",
                                      'pip install "cuda-python>=12"   (13.x for TensorRT-RTX cu13 builds)',
                                      e) from None
    return cudart


class CudaError(RuntimeSetupError):
    pass


class Cuda:
    """The CUDA runtime on one device, with error checking and a per-thread current stream."""

    def __init__(self, device: int = 0):
        self.rt = rt = import_cudart()
        driver = rt.cudaDriverGetVersion()[1]
        err, count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess or count == 0:
            why = "no NVIDIA driver is loaded" if not driver else self.error_text(err) if err else "no GPU is visible"
            raise CudaError(f"no CUDA GPU found ({why}). TensorRT bundles need an NVIDIA GPU: on this machine use "
                            f"a cpu bundle / export folder (ONNX Runtime) or --backend torch")
        if device >= count:
            raise CudaError(f"CUDA device {device} does not exist ({count} visible)")
        self.device = device
        self.call(rt.cudaSetDevice, device)
        props = self.call(rt.cudaGetDeviceProperties, device)
        self.name = props.name.split(b"\0", 1)[0].decode()
        self.compute_capability = f"{props.major}.{props.minor}"
        self.total_memory = props.totalGlobalMem
        self.peak_in_use = 0
        self._local = threading.local()
        self._retired = []              # (ptr, alloc stream, [events]) waiting for their last use
        self._lock = threading.Lock()

    def error_text(self, err) -> str:
        name = self.rt.cudaGetErrorName(err)[1].decode()
        return f"{name}: {self.rt.cudaGetErrorString(err)[1].decode()}"

    def call(self, fn, *args):
        err, *rest = fn(*args)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{fn.__name__} failed: {self.error_text(err)}")
        return rest[0] if len(rest) == 1 else tuple(rest) if rest else None

    # ---- current stream (what a lane sets around its work, like torch.cuda.stream) --------------
    @property
    def stream(self) -> "Stream":
        return self._local.stream

    def on(self, stream: "Stream"):
        cuda = self

        class _On:
            def __enter__(self):
                cuda.call(cuda.rt.cudaSetDevice, cuda.device)     # the runtime's device is per thread
                self.before = getattr(cuda._local, "stream", None)
                cuda._local.stream = stream

            def __exit__(self, *exc):
                cuda._local.stream = self.before
        return _On()

    # ---- what a CudaLane needs (runtime/lanes.py CudaDevice) ------------------------------------
    def new_stream(self) -> "Stream":
        return Stream(self)

    def record(self, stream: "Stream", timing: bool) -> "Event":
        return Event(self, timing).record(stream)

    def wait_event(self, stream: "Stream", event: "Event") -> None:
        stream.wait(event)

    def used_on(self, value, stream: "Stream") -> None:
        for array in flatten(value)[0]:
            if isinstance(array, DeviceArray):
                array.used_on(stream)

    def elapsed_ms(self, start: "Event", end: "Event") -> float:
        return end.elapsed_ms(start)

    def done(self, event: "Event") -> bool:
        return event.done()

    def synchronize(self, event_or_stream) -> None:
        event_or_stream.synchronize()
        if isinstance(event_or_stream, Event):
            self.memory_in_use()            # sample the peak while the chunks are in flight

    # ---- memory ---------------------------------------------------------------------------------
    def retire(self, ptr: int, stream: "Stream", users: set) -> None:
        events = []
        for user in users:
            event = Event(self, timing=False)
            event.record(user)
            events.append(event)
        with self._lock:
            self._retired.append((ptr, stream, events))

    def collect(self) -> None:
        """Free the retired allocations whose last uses have completed."""
        with self._lock:
            keep = []
            for ptr, stream, events in self._retired:
                if all(e.done() for e in events):
                    self.call(self.rt.cudaFreeAsync, ptr, stream.handle)
                else:
                    keep.append((ptr, stream, events))
            self._retired = keep

    def memory_in_use(self) -> int:
        """Bytes in use on the whole device (all processes), as the driver reports."""
        free, total = self.call(self.rt.cudaMemGetInfo)
        self.peak_in_use = max(self.peak_in_use, total - free)
        return total - free


class Stream:
    def __init__(self, cuda: Cuda):
        self.cuda = cuda
        self.handle = cuda.call(cuda.rt.cudaStreamCreateWithFlags, cuda.rt.cudaStreamNonBlocking)

    def wait(self, event: "Event") -> None:
        self.cuda.call(self.cuda.rt.cudaStreamWaitEvent, self.handle, event.handle, 0)

    def synchronize(self) -> None:
        self.cuda.call(self.cuda.rt.cudaStreamSynchronize, self.handle)

    def __del__(self):
        # Work still queued completes first (CUDA releases the stream after it). Arrays waiting to
        # be freed on this stream hold it (Cuda._retired), so it outlives them.
        try:
            self.cuda.rt.cudaStreamDestroy(self.handle)
        except Exception:        # interpreter shutdown
            pass


class Event:
    def __init__(self, cuda: Cuda, timing: bool):
        rt = cuda.rt
        self.cuda = cuda
        flags = rt.cudaEventDefault if timing else rt.cudaEventDisableTiming
        self.handle = cuda.call(rt.cudaEventCreateWithFlags, flags)

    def record(self, stream: Stream) -> "Event":
        self.cuda.call(self.cuda.rt.cudaEventRecord, self.handle, stream.handle)
        return self

    def done(self) -> bool:
        err, = self.cuda.rt.cudaEventQuery(self.handle)
        if err == self.cuda.rt.cudaError_t.cudaErrorNotReady:
            return False
        if err != self.cuda.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"cudaEventQuery failed: {self.cuda.error_text(err)}")
        return True

    def synchronize(self) -> None:
        self.cuda.call(self.cuda.rt.cudaEventSynchronize, self.handle)

    def elapsed_ms(self, start: "Event") -> float:
        return self.cuda.call(self.cuda.rt.cudaEventElapsedTime, start.handle, self.handle)

    def __del__(self):
        try:
            self.cuda.rt.cudaEventDestroy(self.handle)
        except Exception:        # interpreter shutdown
            pass


class DeviceArray:
    """A dense tensor in device memory, allocated on the current stream."""

    def __init__(self, cuda: Cuda, shape, dtype: str):
        self.cuda, self.shape, self.dtype = cuda, tuple(int(d) for d in shape), dtype
        self.nbytes = math.prod(self.shape) * ITEMSIZE[dtype]
        self.stream = cuda.stream
        self.users = {self.stream}
        self.ptr = cuda.call(cuda.rt.cudaMallocAsync, max(self.nbytes, 1), self.stream.handle)

    def used_on(self, stream: Stream) -> None:
        self.users.add(stream)

    def __del__(self):
        try:
            self.cuda.retire(self.ptr, self.stream, self.users)
        except Exception:        # interpreter shutdown: the process's memory goes anyway
            pass


class PinnedPool:
    """Page-locked host buffers, reused once the copy that last used them has completed. close()
    frees them all (those handed out too): call it once no copy can still use them."""

    def __init__(self, cuda: Cuda):
        self.cuda = cuda
        self.free: list[tuple[int, int]] = []          # (nbytes, ptr)
        self.busy: list[tuple[int, int, Event]] = []   # (nbytes, ptr, event of the last copy)
        self.by_address: dict[int, tuple[int, int]] = {}

    def array(self, shape, dtype=np.uint8) -> np.ndarray:
        """A numpy array over a pinned buffer; hand it back with release() once copied."""
        nbytes = max(1, math.prod(shape) * np.dtype(dtype).itemsize)
        still_busy = []
        for size, ptr, event in self.busy:
            if event.done():
                self.free.append((size, ptr))
            else:
                still_busy.append((size, ptr, event))
        self.busy = still_busy
        fits = [b for b in self.free if b[0] >= nbytes]
        if fits:
            buffer = min(fits)
            self.free.remove(buffer)
        else:
            buffer = (nbytes, self.cuda.call(self.cuda.rt.cudaMallocHost, nbytes))
        raw = (ctypes.c_uint8 * buffer[0]).from_address(buffer[1])
        array = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
        self.by_address[buffer[1]] = buffer
        return array

    def release(self, array: np.ndarray, after: Event | None = None) -> None:
        buffer = self.by_address.pop(array.ctypes.data)
        if after is None:
            self.free.append(buffer)
        else:
            self.busy.append((*buffer, after))

    def close(self) -> None:
        for _, _, event in self.busy:
            event.synchronize()
        # Buffers still handed out (a download nobody collected) are freed too: their arrays are
        # this pool's own, callers only ever get copies (finish()).
        buffers = self.free + [(size, ptr) for size, ptr, _ in self.busy] + list(self.by_address.values())
        self.free, self.busy, self.by_address = [], [], {}
        for _, ptr in buffers:
            self.cuda.call(self.cuda.rt.cudaFreeHost, ptr)


def copy_rows(cuda: Cuda, dst: DeviceArray, dst_offset: int, dst_pitch: int, src: DeviceArray, src_offset: int,
              src_pitch: int, width: int, rows: int) -> None:
    """`rows` rows of `width` bytes between two device arrays, on the current stream."""
    rt = cuda.rt
    cuda.call(rt.cudaMemcpy2DAsync, dst.ptr + dst_offset, dst_pitch, src.ptr + src_offset, src_pitch, width, rows,
              rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, cuda.stream.handle)
