"""The CUDA runtime calls runtime/backends/cuda.py makes, over host memory: the "device".

`python -m runtime.gpucheck --dry` and the tests run every line of the CUDA plumbing with it in
place of cuda-python (`use_host_cuda`): allocations are ctypes buffers, copies and memsets happen
at once with ctypes, events complete when recorded (or, with complete_on_record=False, only when
synchronized, so a test can see who waits for them). Like cuda-python it returns (error, value...)
tuples, takes a release threshold only as a cuuint64_t, and reports cudaErrorInsufficientDriver for
a missing or too old driver. Every call is logged with the calling thread's current device, which
is per thread as in CUDA (0 until the thread sets another).
"""
import ctypes
import threading
import time
from types import SimpleNamespace

SUCCESS, INSUFFICIENT_DRIVER, NO_DEVICE, NOT_READY = 0, 35, 100, 600
ERROR_NAMES = {SUCCESS: "cudaSuccess", INSUFFICIENT_DRIVER: "cudaErrorInsufficientDriver",
               NO_DEVICE: "cudaErrorNoDevice", NOT_READY: "cudaErrorNotReady"}


class cuuint64_t:
    """cuda.bindings.driver.cuuint64_t: what cudaMemPoolSetAttribute takes (a plain int is refused)."""

    def __init__(self, value: int):
        self.value = int(value)

    def getPtr(self) -> int:
        return id(self)

    def __int__(self) -> int:
        return self.value


HOST_DRIVER = SimpleNamespace(cuuint64_t=cuuint64_t)


class HostCudart:
    cudaError_t = SimpleNamespace(cudaSuccess=SUCCESS, cudaErrorInsufficientDriver=INSUFFICIENT_DRIVER,
                                  cudaErrorNoDevice=NO_DEVICE, cudaErrorNotReady=NOT_READY)
    cudaMemPoolAttr = SimpleNamespace(cudaMemPoolAttrReleaseThreshold=4)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2, cudaMemcpyDeviceToDevice=3)
    cudaEventDefault, cudaEventDisableTiming, cudaStreamNonBlocking = 0, 2, 1

    def __init__(self, devices: int = 1, driver: int = 13000, runtime: int = 13000, complete_on_record: bool = True,
                 memory: int = 1 << 34):
        self.devices, self.driver, self.runtime, self.memory = devices, driver, runtime, memory
        self.complete_on_record = complete_on_record
        self.calls: list[tuple[str, int]] = []          # (call, the calling thread's current device)
        self.device_buffers, self.host_buffers = {}, {}  # ptr -> ctypes buffer, while allocated
        self.host_allocated: list[int] = []
        self.malloced: list[tuple[int, int]] = []        # (ptr, bytes) of every cudaMalloc
        self.freed: list[int] = []
        self.events: dict[int, dict] = {}                # handle -> {"done", "stream", "time"}
        self.streams: dict[int, int] = {}                # handle -> device
        self.streams_destroyed: list[int] = []
        self.pool_attributes: dict = {}                  # (pool, attribute) -> int
        self.hook = None                                 # called with each call's name (tests)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._handles = 0

    # ---- bookkeeping -------------------------------------------------------------------------
    def current(self) -> int:
        return getattr(self._local, "device", 0)

    def _log(self, name: str) -> None:
        self.calls.append((name, self.current()))
        if self.hook:
            self.hook(name)

    def _handle(self) -> int:
        with self._lock:
            self._handles += 1
            return self._handles

    # ---- driver, devices, errors -------------------------------------------------------------
    def cudaDriverGetVersion(self):
        return SUCCESS, self.driver

    def cudaRuntimeGetVersion(self):
        return SUCCESS, self.runtime

    def cudaGetDeviceCount(self):
        if not self.driver or self.driver // 1000 < self.runtime // 1000:
            return INSUFFICIENT_DRIVER, None
        return (SUCCESS, self.devices) if self.devices else (NO_DEVICE, 0)

    def cudaGetErrorName(self, err):
        return SUCCESS, ERROR_NAMES.get(err, f"cudaError{err}").encode()

    def cudaGetErrorString(self, err):
        return SUCCESS, f"host stand-in error {err}".encode()

    def cudaGetDevice(self):
        return SUCCESS, self.current()

    def cudaSetDevice(self, device):
        if not 0 <= device < self.devices:
            return 101, None
        self._local.device = device
        return (SUCCESS,)

    def cudaGetDeviceProperties(self, device):
        self._log("cudaGetDeviceProperties")
        return SUCCESS, SimpleNamespace(name=b"host stand-in\0\0", major=9, minor=0, totalGlobalMem=self.memory)

    def cudaDeviceGetDefaultMemPool(self, device):
        self._log("cudaDeviceGetDefaultMemPool")
        return SUCCESS, 1000 + device

    def cudaMemPoolSetAttribute(self, pool, attribute, value):
        self._log("cudaMemPoolSetAttribute")
        value.getPtr()                       # as cuda-python: the value must be the attribute's type
        self.pool_attributes[pool, attribute] = int(value)
        return (SUCCESS,)

    def cudaMemPoolGetAttribute(self, pool, attribute):
        self._log("cudaMemPoolGetAttribute")
        return SUCCESS, cuuint64_t(self.pool_attributes.get((pool, attribute), 0))

    def cudaMemGetInfo(self):
        self._log("cudaMemGetInfo")
        used = sum(ctypes.sizeof(b) for b in list(self.device_buffers.values()))
        return SUCCESS, self.memory - used, self.memory

    # ---- streams and events ------------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags):
        self._log("cudaStreamCreateWithFlags")
        handle = self._handle()
        self.streams[handle] = self.current()
        return SUCCESS, handle

    def cudaStreamDestroy(self, stream):
        self._log("cudaStreamDestroy")
        self.streams_destroyed.append(stream)
        return (SUCCESS,)

    def cudaStreamSynchronize(self, stream):
        self._log("cudaStreamSynchronize")
        for event in list(self.events.values()):
            if event["stream"] == stream:
                event["done"] = True
        return (SUCCESS,)

    def cudaStreamWaitEvent(self, stream, event, flags):
        self._log("cudaStreamWaitEvent")
        return (SUCCESS,)

    def cudaEventCreateWithFlags(self, flags):
        self._log("cudaEventCreateWithFlags")
        handle = self._handle()
        self.events[handle] = {"done": False, "stream": None, "time": 0.0}
        return SUCCESS, handle

    def cudaEventRecord(self, event, stream):
        self._log("cudaEventRecord")
        self.events[event].update(done=self.complete_on_record, stream=stream, time=time.perf_counter())
        return (SUCCESS,)

    def cudaEventQuery(self, event):
        self._log("cudaEventQuery")
        return (SUCCESS if self.events[event]["done"] else NOT_READY,)

    def cudaEventSynchronize(self, event):
        self._log("cudaEventSynchronize")
        self.events[event]["done"] = True
        return (SUCCESS,)

    def cudaEventElapsedTime(self, start, end):
        self._log("cudaEventElapsedTime")
        return SUCCESS, (self.events[end]["time"] - self.events[start]["time"]) * 1e3

    def cudaEventDestroy(self, event):
        self._log("cudaEventDestroy")
        self.events.pop(event, None)
        return (SUCCESS,)

    # ---- memory ------------------------------------------------------------------------------
    def _allocate(self, table: dict, nbytes: int) -> int:
        buffer = (ctypes.c_uint8 * nbytes)()
        table[ctypes.addressof(buffer)] = buffer
        return ctypes.addressof(buffer)

    def cudaMallocAsync(self, nbytes, stream):
        self._log("cudaMallocAsync")
        return SUCCESS, self._allocate(self.device_buffers, nbytes)

    def cudaFreeAsync(self, ptr, stream):
        return self._free("cudaFreeAsync", ptr)

    def _free(self, call: str, ptr):
        self._log(call)
        assert ptr in self.device_buffers, "freed twice or never allocated"
        del self.device_buffers[ptr]
        self.freed.append(ptr)
        return (SUCCESS,)

    def cudaMalloc(self, nbytes):
        self._log("cudaMalloc")
        ptr = self._allocate(self.device_buffers, nbytes)
        self.malloced.append((ptr, nbytes))
        return SUCCESS, ptr

    def cudaFree(self, ptr):
        return self._free("cudaFree", ptr)

    def cudaMallocHost(self, nbytes):
        self._log("cudaMallocHost")
        ptr = self._allocate(self.host_buffers, nbytes)
        self.host_allocated.append(ptr)
        return SUCCESS, ptr

    def cudaFreeHost(self, ptr):
        self._log("cudaFreeHost")
        assert ptr in self.host_buffers, "freed twice or never allocated"
        del self.host_buffers[ptr]
        self.freed.append(ptr)
        return (SUCCESS,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        self._log("cudaMemcpyAsync")
        ctypes.memmove(dst, src, nbytes)
        return (SUCCESS,)

    def cudaMemcpy2DAsync(self, dst, dst_pitch, src, src_pitch, width, rows, kind, stream):
        self._log("cudaMemcpy2DAsync")
        for row in range(rows):
            ctypes.memmove(dst + row * dst_pitch, src + row * src_pitch, width)
        return (SUCCESS,)

    def cudaMemsetAsync(self, ptr, value, nbytes, stream):
        self._log("cudaMemsetAsync")
        ctypes.memset(ptr, value, nbytes)
        return (SUCCESS,)


def use_host_cuda(cudart: HostCudart):
    """Make runtime/backends/cuda.py use `cudart` (and its cuuint64_t); returns a function that undoes it."""
    from ..backends import cuda
    before = cuda.import_cuda
    cuda.import_cuda = lambda: (cudart, HOST_DRIVER)
    return lambda: setattr(cuda, "import_cuda", before)
