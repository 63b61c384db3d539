"""runtime/lanes.py's CudaLane, runtime/backends/cuda.py's buffers and streams and the TensorRT
backend's engine runner, through fakes (no GPU): a TensorRT Session must give back every page-locked
buffer and stream it allocated, and an engine call TensorRT would refuse must say why."""
import ctypes
import threading
import types

import numpy as np
import pytest

from runtime.backend import Runner
from runtime.backends.cuda import Cuda, Event, PinnedPool
from runtime.lanes import CudaLane, OnDevice, StageStats, cuda_lanes


class FakeCudart:
    """The few cudart calls PinnedPool and Event make; host memory is ctypes buffers. Events
    complete when synchronized (so a test can see close() wait for the last copy)."""

    cudaError_t = types.SimpleNamespace(cudaSuccess=0, cudaErrorNotReady=600)
    cudaEventDefault, cudaEventDisableTiming, cudaStreamNonBlocking = 0, 2, 1

    def __init__(self):
        self.buffers, self.freed, self.events = {}, [], {}
        self.streams, self.streams_destroyed = 0, []

    def cudaMallocHost(self, nbytes):
        buffer = (ctypes.c_uint8 * nbytes)()
        self.buffers[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaFreeHost(self, ptr):
        assert ptr in self.buffers and ptr not in self.freed, "freed twice or never allocated"
        self.freed.append(ptr)
        return (0,)

    def cudaEventCreateWithFlags(self, flags):
        handle = len(self.events) + 1
        self.events[handle] = False
        return 0, handle

    def cudaEventRecord(self, event, stream):
        return (0,)

    def cudaEventQuery(self, event):
        return (0 if self.events[event] else 600,)

    def cudaEventSynchronize(self, event):
        self.events[event] = True
        return (0,)

    def cudaEventDestroy(self, event):
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        self.streams += 1
        return 0, self.streams

    def cudaStreamDestroy(self, stream):
        self.streams_destroyed.append(stream)
        return (0,)

    def cudaMallocAsync(self, nbytes, stream):          # device memory: addresses only
        self.device_bytes = getattr(self, "device_bytes", 0) + nbytes
        return 0, 0x10000 + self.device_bytes

    def cudaFreeAsync(self, ptr, stream):
        return (0,)


def fake_cuda() -> Cuda:
    cuda = Cuda.__new__(Cuda)            # no device: only the call wrapper and the runtime module
    cuda.rt = FakeCudart()
    return cuda


def test_pinned_pool_close_frees_every_buffer_it_allocated():
    cuda = fake_cuda()
    pool = PinnedPool(cuda)
    uploaded = pool.array((2, 4, 4, 3))
    pool.release(uploaded, after=Event(cuda, timing=False).record(types.SimpleNamespace(handle=0)))
    reused = pool.array((1, 4, 4, 3))           # the upload's copy has not finished: a new buffer
    pool.release(reused)
    again = pool.array((1, 4, 4, 3))            # free now: reused, nothing new
    downloading = pool.array((3, 4, 4, 3))      # handed out and never collected (a dropped download)
    assert len(cuda.rt.buffers) == 3 and again.ctypes.data == reused.ctypes.data
    assert downloading.shape == (3, 4, 4, 3)
    pool.close()
    assert sorted(cuda.rt.freed) == sorted(cuda.rt.buffers)
    assert all(cuda.rt.events.values())         # the busy buffer's copy was waited for first


def test_a_stream_is_destroyed_with_its_last_reference():
    cuda = fake_cuda()
    lanes = cuda_lanes(cuda, overlap=True, stats=StageStats())
    assert cuda.rt.streams == len(lanes)
    del lanes
    assert sorted(cuda.rt.streams_destroyed) == list(range(1, cuda.rt.streams + 1))


def test_runner_close_closes_the_lanes_then_the_kernels():
    order = []

    class Lane:
        def close(self):
            order.append("lane")

    class Kernels:
        def close(self):
            order.append("kernels")
    Runner(Kernels(), {"encode": Lane(), "dit": Lane()}).close()
    assert order == ["lane", "lane", "kernels"]


class FakeDevice:
    """A CudaDevice that logs what a CudaLane asks of it; work runs at once."""

    def __init__(self):
        self.log = []

    def new_stream(self):
        return f"stream{len(self.log)}"

    def on(self, stream):
        device = self

        class On:
            def __enter__(self):
                device.log.append(("on", stream))

            def __exit__(self, *exc):
                pass
        return On()

    def record(self, stream, timing):
        self.log.append(("record", stream, timing))
        return ("event", len(self.log))

    def wait_event(self, stream, event):
        self.log.append(("wait", stream, event))

    def used_on(self, value, stream):
        self.log.append(("used", stream, value))

    def elapsed_ms(self, start, end):
        return float(end[1] - start[1])

    def done(self, event):
        return True

    def synchronize(self, x):
        self.log.append(("sync", x))


def test_cuda_lane_waits_on_the_producers_event_and_times_the_stage():
    device, stats = FakeDevice(), StageStats()
    encode, dit = CudaLane("encode", stats, device, "s1"), CudaLane("dit", stats, device, "s2")
    lq, state = encode.submit(lambda x: (np.asarray(x) + 1, {"m": 0}), 1, outputs=2)
    assert isinstance(lq, OnDevice) and lq.event == state.event
    hq = dit.submit(lambda x: x * 2, lq)
    assert ("wait", "s2", lq.event) in device.log and ("used", "s2", lq.value) in device.log
    assert dit.wait(hq) == 4 and ("sync", hq.event) in device.log
    stats.resolve()
    assert set(stats.ms) == {"encode", "dit"}
    untimed = dit.submit(lambda: 0, timed=False)
    assert device.log[-1] == ("record", "s2", False) and dit.ready(untimed)


# ---- the TensorRT backend's engine runner --------------------------------------------------------

class FakeStream:
    handle = 7


class FakeEngine:
    """What EngineRunner asks of a TensorRT engine: one optimization profile, frames T in 4..12."""
    profile = {"frames": ([4, 16, 16, 3], [8, 16, 16, 3], [12, 16, 16, 3])}

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return self.profile[name]


class FakeContext:
    """An execution context as TensorRT's behaves: set_input_shape returns False outside the profile
    (and the input's shape stays unset, so the outputs' shapes come back as -1s)."""

    def __init__(self):
        self.shapes, self.addresses, self.enqueued = {}, {}, 0

    def set_input_shape(self, name, shape):
        low, _, high = FakeEngine.profile[name]
        if not all(lo <= d <= hi for lo, d, hi in zip(low, shape, high)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        frames = self.shapes.get("frames", (-1,))[0]
        return (1, 48, frames // 4 if frames > 0 else -1, 8, 8)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        self.enqueued += 1
        return True


def test_engine_runner_refuses_an_input_outside_the_profile_by_name():
    from contract.graphs import Graph, Tensor
    from runtime.backends.cuda import DeviceArray
    from runtime.backends.tensorrt import EngineRunner
    from runtime.errors import RuntimeSetupError
    cuda = fake_cuda()
    cuda._local, cuda._retired, cuda._lock = threading.local(), [], threading.Lock()
    cuda._local.stream = FakeStream()
    graph = Graph("encoder", "encoder", "encoder.engine", (Tensor("frames", ("T", 16, 16, 3), "uint8"),),
                  (Tensor("latents", (1, 48, "F", 8, 8), "float16"),), {"T": {"min": 4, "opt": 8, "max": 12}})
    context = FakeContext()
    runner = EngineRunner(types.SimpleNamespace(cuda=cuda, engines={"encoder": FakeEngine()}), {"encoder": context})
    out = runner.run(graph, {"frames": DeviceArray(cuda, (8, 16, 16, 3), "uint8")})["latents"]
    assert (out.shape, out.nbytes, context.enqueued) == ((1, 48, 2, 8, 8), 48 * 2 * 64 * 2, 1)
    with pytest.raises(RuntimeSetupError, match=r"^engine encoder: input frames of shape \[40, 16, 16, 3\] is outside "
                                                r"its optimization profile \(min \[4, 16, 16, 3\], max \[12, 16, 16, 3\]\)$"):
        runner.run(graph, {"frames": DeviceArray(cuda, (40, 16, 16, 3), "uint8")})
    assert context.enqueued == 1                       # nothing was enqueued for it


def test_tensorrt_types_have_their_numpy_names_or_say_why_not():
    trt = pytest.importorskip("tensorrt_rtx")
    from contract.graphs import Graph, Tensor
    from runtime.backends.cuda import ITEMSIZE
    from runtime.backends.tensorrt import check_engine_io, numpy_name
    from runtime.errors import RuntimeSetupError
    names = {}
    for member, dtype in trt.DataType.__members__.items():
        try:
            names[member] = numpy_name(trt, dtype)
        except RuntimeSetupError as e:
            assert "has no numpy dtype" in str(e) and member in str(e)
    assert names == {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                     "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}
    assert all(name in ITEMSIZE for name in names.values())       # the runtime can size every one

    graph = Graph("decoder", "decoder", "decoder.engine", (Tensor("latents", (1, 48, 2, 8, 8), "float16"),),
                  (Tensor("frames", (8, 32, 32, 3), "uint8"),), {})
    plan = types.SimpleNamespace(graphs=lambda: [graph])

    def engine(dtypes):
        return types.SimpleNamespace(get_tensor_dtype=lambda name: dtypes[name])
    check_engine_io(trt, plan, {"decoder": engine({"latents": trt.DataType.HALF, "frames": trt.DataType.UINT8})}, "b")
    with pytest.raises(RuntimeSetupError, match="engine decoder has latents as float32, the manifest says float16"):
        check_engine_io(trt, plan, {"decoder": engine({"latents": trt.DataType.FLOAT, "frames": trt.DataType.UINT8})}, "b")
    with pytest.raises(RuntimeSetupError, match="engine decoder, tensor latents: TensorRT data type FP8 has no numpy"):
        check_engine_io(trt, plan, {"decoder": engine({"latents": trt.DataType.FP8, "frames": trt.DataType.UINT8})}, "b")
