"""CUDA for the TensorRT backend, through cuda-python (`cuda.bindings.runtime`).

Only what the pipeline needs: streams, events, stream-ordered device memory (cudaMallocAsync),
page-locked host memory (cudaMallocHost) and async copies. Every call's error code is checked.

`Cuda` is also the CudaDevice a TensorRT Session's CudaLanes (runtime/lanes.py) run on.

The current device is per thread in CUDA, and a Session may be opened and driven from any thread
(a serve replica's, a C caller's): every call goes through `Cuda.call`, which makes this Cuda's
device current for the call and puts the thread's own device back after it, so nothing lands on
(or creates a context on) device 0 by accident, and the caller's device is left as it was.

Device arrays are allocated on the stream of the stage that makes them and used on others. When
Python drops one, `retire` only notes it (it may run inside the garbage collector, on any thread,
in the middle of other work here, so it takes no lock and makes no CUDA call); the next `collect`
records an event on every stream that used it and gives the memory back (cudaFreeAsync) once those
events have completed: no stream ever waits for a free, and memory in use stays bounded by the
chunks in flight. The device's default memory pool keeps what it has reserved (release threshold
raised), so the next chunk's cudaMallocAsync reuses it instead of mapping memory again after every
synchronization.
"""
import collections
import contextlib
import ctypes
import math
import threading

import numpy as np

from ..errors import MissingPackageError, RuntimeSetupError
from ..nest import flatten

ITEMSIZE = {"uint8": 1, "int8": 1, "bool": 1, "float16": 2, "bfloat16": 2, "float32": 4, "int32": 4, "int64": 8}
KEEP_RESERVED = 2**64 - 1      # cudaMemPoolAttrReleaseThreshold: never trim the pool at a synchronization


def import_cuda():
    """(the CUDA runtime module, the driver module) of cuda-python."""
    try:
        from cuda.bindings import driver, runtime
    except ImportError as e:
        try:                                     # cuda-python before 12.6 named them cuda.cudart, cuda.cuda
            from cuda import cuda as driver, cudart as runtime
        except ImportError:
            raise MissingPackageError("the TensorRT backend (device memory and CUDA streams)",
                                      "cuda.bindings (cuda-python)",
                                      'pip install "cuda-python>=12"   (13.x for TensorRT-RTX cu13 builds)',
                                      e) from None
    return runtime, driver


def cuda_version(number: int) -> str:
    """CUDA's version numbers (1000 * major + 10 * minor) as "13.0"."""
    return f"{number // 1000}.{number % 1000 // 10}"


class CudaError(RuntimeSetupError):
    pass


class Cuda:
    """The CUDA runtime on one device, with error checking and a per-thread current stream."""

    def __init__(self, device: int = 0):
        rt, self.driver = import_cuda()
        self.rt, self.device = rt, device
        driver = rt.cudaDriverGetVersion()[1]          # 0: no driver loaded
        err, count = rt.cudaGetDeviceCount()
        if err == rt.cudaError_t.cudaErrorInsufficientDriver and driver:
            built_for = cuda_version(rt.cudaRuntimeGetVersion()[1])
            raise CudaError(f"the NVIDIA driver is too old for this cuda-python: the driver supports CUDA "
                            f"{cuda_version(driver)}, cuda-python is built for CUDA {built_for}. Update the NVIDIA "
                            f"driver to one for CUDA {built_for.split('.')[0]}.x or newer (or install cuda-python "
                            f"{driver // 1000}.x and a TensorRT built for CUDA {driver // 1000})")
        if err != rt.cudaError_t.cudaSuccess or count == 0:
            why = "no NVIDIA driver is loaded" if not driver else self.error_text(err) if err else "no GPU is visible"
            raise CudaError(f"no CUDA GPU found ({why}). TensorRT bundles need an NVIDIA GPU: on this machine use "
                            f"a cpu bundle / export folder (ONNX Runtime) or --backend torch")
        if device >= count:
            raise CudaError(f"CUDA device {device} does not exist ({count} visible)")
        props = self.call(rt.cudaGetDeviceProperties, device)
        self.name = props.name.split(b"\0", 1)[0].decode()
        self.compute_capability = f"{props.major}.{props.minor}"
        self.total_memory = props.totalGlobalMem
        pool = self.call(rt.cudaDeviceGetDefaultMemPool, device)
        self.call(rt.cudaMemPoolSetAttribute, pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold,
                  self.driver.cuuint64_t(KEEP_RESERVED))
        self.peak_in_use = 0
        self._local = threading.local()
        self._retired = collections.deque()   # (ptr, alloc stream, streams that used it): dropped by Python
        self._waiting = []                    # (ptr, alloc stream, [events]): freed once the events complete
        self._collecting = threading.Lock()

    def error_text(self, err) -> str:
        name = self.rt.cudaGetErrorName(err)[1].decode()
        return f"{name}: {self.rt.cudaGetErrorString(err)[1].decode()}"

    @contextlib.contextmanager
    def current(self):
        """This Cuda's device is the thread's current one inside; the thread's own comes back after."""
        rt = self.rt
        err, before = rt.cudaGetDevice()
        switch = err != rt.cudaError_t.cudaSuccess or before != self.device
        if switch:
            err, = rt.cudaSetDevice(self.device)
            if err != rt.cudaError_t.cudaSuccess:
                raise CudaError(f"cudaSetDevice({self.device}) failed: {self.error_text(err)}")
        try:
            yield
        finally:
            if switch and before is not None:
                rt.cudaSetDevice(before)

    def call(self, fn, *args):
        with self.current():
            err, *rest = fn(*args)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaError(f"{fn.__name__} failed: {self.error_text(err)}")
        return rest[0] if len(rest) == 1 else tuple(rest) if rest else None

    # ---- current stream (what a lane sets around its work, like torch.cuda.stream) --------------
    @property
    def stream(self) -> "Stream":
        return self._local.stream

    @contextlib.contextmanager
    def on(self, stream: "Stream"):
        """`stream` is the current stream, and this Cuda's device the current device, inside: what
        runs there (TensorRT's enqueue included) launches on them."""
        before = getattr(self._local, "stream", None)
        with self.current():
            self._local.stream = stream
            try:
                yield
            finally:
                self._local.stream = before

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
        """A dropped DeviceArray's memory, to free once its last uses are done. Runs in __del__: on any
        thread, maybe inside the garbage collector while this thread is in collect(), so it only
        appends (atomic in a deque): no lock to wait for, no CUDA call."""
        self._retired.append((ptr, stream, users))

    def collect(self) -> None:
        """Free the retired allocations whose last uses have completed. An event recorded now on each
        stream that used an array follows its last use: the array was dropped after that use was
        enqueued, and nothing can use it since."""
        with self._collecting:
            while self._retired:
                ptr, stream, users = self._retired.popleft()
                self._waiting.append((ptr, stream, [Event(self, timing=False).record(u) for u in users]))
            keep = []
            for ptr, stream, events in self._waiting:
                if all(e.done() for e in events):
                    self.call(self.rt.cudaFreeAsync, ptr, stream.handle)
                else:
                    keep.append((ptr, stream, events))
            self._waiting = keep

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
        # be freed on this stream hold it (Cuda._retired / _waiting), so it outlives them.
        try:
            self.cuda.call(self.cuda.rt.cudaStreamDestroy, self.handle)
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
        with self.cuda.current():
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
            self.cuda.call(self.cuda.rt.cudaEventDestroy, self.handle)
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


class DeviceBuffer:
    """Device memory outside the stream-ordered pool, for the life of a Session (cudaMalloc: aligned
    to 256 bytes at least, as TensorRT wants its context memory). free() once no work can use it."""

    def __init__(self, cuda: Cuda, nbytes: int):
        self.cuda, self.nbytes = cuda, nbytes
        self.ptr = cuda.call(cuda.rt.cudaMalloc, max(nbytes, 1))

    def free(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            self.cuda.call(self.cuda.rt.cudaFree, ptr)

    def __del__(self):
        try:
            self.free()
        except Exception:        # interpreter shutdown
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
