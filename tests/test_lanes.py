"""runtime/lanes.py's CudaLane and runtime/backends/cuda.py's buffers and streams, through fakes
(no GPU): a TensorRT Session must give back every page-locked buffer and stream it allocated."""
import ctypes
import types

import numpy as np

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
