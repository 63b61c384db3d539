"""runtime/lanes.py's CudaLane and runtime/backends/cuda.py's buffers, streams, devices and memory,
through runtime/gpucheck/hostcuda.py's HostCudart (the CUDA runtime over host memory; no GPU): a
TensorRT Session must give back every page-locked buffer, stream and device allocation it made,
make every CUDA call on its own device whatever thread it runs on, and keep the memory pool.
What only a GPU can show is in `python -m runtime.gpucheck`."""
import gc
import threading
import types

import numpy as np
import pytest

from runtime.backend import Runner
from runtime.backends import cuda as cuda_module
from runtime.backends.cuda import KEEP_RESERVED, Cuda, CudaError, DeviceArray, Event, PinnedPool, copy_rows
from runtime.gpucheck.hostcuda import HostCudart, use_host_cuda
from runtime.lanes import CudaLane, OnDevice, StageStats, cuda_lanes


@pytest.fixture
def host_cuda():
    """make(**HostCudart options) -> a Cuda over a HostCudart on `device`; the runtime's import is restored after."""
    undo = []

    def make(device=0, **options):
        rt = HostCudart(**options)
        undo.append(use_host_cuda(rt))
        return Cuda(device)
    yield make
    for restore in undo:
        restore()


def test_pinned_pool_close_frees_every_buffer_it_allocated(host_cuda):
    cuda = host_cuda(complete_on_record=False)
    pool = PinnedPool(cuda)
    uploaded = pool.array((2, 4, 4, 3))
    pool.release(uploaded, after=Event(cuda, timing=False).record(types.SimpleNamespace(handle=0)))
    reused = pool.array((1, 4, 4, 3))           # the upload's copy has not finished: a new buffer
    pool.release(reused)
    again = pool.array((1, 4, 4, 3))            # free now: reused, nothing new
    downloading = pool.array((3, 4, 4, 3))      # handed out and never collected (a dropped download)
    assert len(cuda.rt.host_allocated) == 3 and again.ctypes.data == reused.ctypes.data
    assert downloading.shape == (3, 4, 4, 3)
    pool.close()
    assert sorted(cuda.rt.freed) == sorted(cuda.rt.host_allocated) and not cuda.rt.host_buffers
    assert all(e["done"] for e in cuda.rt.events.values())    # the busy buffer's copy was waited for first


def test_a_stream_is_destroyed_with_its_last_reference(host_cuda):
    cuda = host_cuda()
    lanes = cuda_lanes(cuda, overlap=True, stats=StageStats())
    assert len(cuda.rt.streams) == len(lanes)
    del lanes
    assert sorted(cuda.rt.streams_destroyed) == sorted(cuda.rt.streams)


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


# ---- the device's memory pool, the driver, devices per thread ------------------------------------

def test_the_default_pool_keeps_its_memory_across_synchronizations(host_cuda):
    """cudaMemPoolAttrReleaseThreshold defaults to 0: every event or stream synchronization would give
    the pool's memory back and the next chunk's cudaMallocAsync map it again."""
    cuda = host_cuda(device=1, devices=2)
    threshold = cuda.rt.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold
    assert cuda.rt.pool_attributes == {(1001, threshold): KEEP_RESERVED}       # device 1's pool
    assert ("cudaMemPoolSetAttribute", 1) in cuda.rt.calls


def test_an_old_driver_says_update_the_driver(host_cuda):
    with pytest.raises(CudaError, match=r"driver is too old.*supports CUDA 12\.4.*built for CUDA 13\.0.*Update the "
                                        r"NVIDIA driver to one for CUDA 13\.x"):
        host_cuda(driver=12040)
    with pytest.raises(CudaError, match=r"no CUDA GPU found \(no NVIDIA driver is loaded\).*cpu bundle"):
        host_cuda(driver=0)
    with pytest.raises(CudaError, match=r"no CUDA GPU found \(cudaErrorNoDevice"):
        host_cuda(devices=0)


def run_a_stream(cuda: Cuda) -> None:
    """What a TensorRT Session does with its Cuda: lanes, pinned buffers, device arrays made on one
    stage's stream and copied on another's, events, timings, frees, closing."""
    lanes = cuda_lanes(cuda, overlap=True, stats=StageStats())
    pool = PinnedPool(cuda)
    host = pool.array((2, 4, 4, 3))
    frames = lanes["upload"].submit(lambda: DeviceArray(cuda, host.shape, "uint8"))
    copied = lanes["encode"].submit(lambda f: copy_rows(cuda, DeviceArray(cuda, f.shape, "uint8"), 0, 48, f, 0, 48,
                                                        48, 2), frames)
    lanes["encode"].wait(copied)
    cuda.elapsed_ms(Event(cuda, True), Event(cuda, True))
    del frames, copied
    cuda.collect()
    cuda.memory_in_use()
    for lane in lanes.values():
        lane.close()
    pool.close()
    del lanes
    gc.collect()


def test_every_call_is_made_on_the_sessions_device_from_any_thread(host_cuda):
    """A Session on device 1 driven from a thread whose current device is 0 (a serve replica's): its
    streams, events, allocations, copies and frees all go to device 1, and the thread's own device is
    left as it was."""
    cuda = host_cuda(device=1, devices=2)
    rt, seen = cuda.rt, {}

    def stream_work():
        rt.calls.clear()
        run_a_stream(cuda)
        seen["devices"] = {device for _, device in rt.calls}
        seen["calls"] = {name for name, _ in rt.calls}
        seen["thread's device after"] = rt.current()
    worker = threading.Thread(target=stream_work)
    worker.start()
    worker.join()
    assert {"cudaStreamCreateWithFlags", "cudaMallocHost", "cudaMallocAsync", "cudaEventRecord", "cudaFreeAsync",
            "cudaFreeHost", "cudaMemGetInfo", "cudaStreamDestroy"} <= seen["calls"]
    assert seen["devices"] == {1} and seen["thread's device after"] == 0


def test_an_array_dropped_by_the_garbage_collector_inside_collect_does_not_hang(host_cuda):
    """DeviceArray.__del__ retires its memory. The garbage collector can run it anywhere, e.g. while
    this thread is inside collect(): retiring must not wait for collect's lock."""
    cuda = host_cuda()
    stream = cuda.new_stream()
    with cuda.on(stream):
        first = DeviceArray(cuda, (4,), "float32")
        cycle = [DeviceArray(cuda, (8,), "float32")]
    cycle.append(cycle)                     # freed only by the garbage collector
    collected = []

    def collect_during_collect(name):
        if name == "cudaEventQuery" and not collected:      # inside collect(), holding its lock
            collected.append(gc.collect())
    done = threading.Event()

    def work():
        gc.disable()
        try:
            nonlocal first, cycle
            del first, cycle
            cuda.rt.hook = collect_during_collect
            cuda.collect()
            cuda.collect()
            done.set()
        finally:
            gc.enable()
    threading.Thread(target=work, daemon=True).start()
    assert done.wait(10), "collect() hung: a __del__ run inside it waited for its lock"
    assert collected and len(cuda.rt.freed) == 2 and not cuda.rt.device_buffers


def test_the_calls_fit_the_installed_cuda_python():
    """Every call a Session makes, with its argument types, accepted by the real cuda-python (where it
    is installed and no driver is loaded: each call then fails with cudaErrorInsufficientDriver after
    checking its arguments, e.g. a plain int refused as a release threshold)."""
    bindings = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    from cuda.bindings import driver as real_driver
    if bindings.cudaDriverGetVersion()[1]:
        pytest.skip("an NVIDIA driver is loaded here: python -m runtime.gpucheck runs these calls for real")
    host = HostCudart(devices=2)

    class Checked:
        """The host stand-in, each call first handed to the real binding with the same arguments."""
        cudaError_t, cudaMemPoolAttr = bindings.cudaError_t, bindings.cudaMemPoolAttr
        cudaMemcpyKind = bindings.cudaMemcpyKind
        cudaEventDefault, cudaEventDisableTiming = bindings.cudaEventDefault, bindings.cudaEventDisableTiming
        cudaStreamNonBlocking = bindings.cudaStreamNonBlocking
        checked = set()

        def __getattr__(self, name):
            real, fake = getattr(bindings, name), getattr(host, name)

            def call(*args):
                err = real(*args)[0]                 # raises on an argument of the wrong type or count
                assert isinstance(err, bindings.cudaError_t), (name, err)
                self.checked.add(name)
                out = fake(*args)
                return (bindings.cudaError_t(out[0]), *out[1:])
            return call
    rt = Checked()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cuda_module, "import_cuda", lambda: (rt, real_driver))
        run_a_stream(Cuda(1))
    assert {"cudaMemPoolSetAttribute", "cudaMallocAsync", "cudaFreeAsync", "cudaMallocHost", "cudaFreeHost",
            "cudaEventRecord", "cudaStreamWaitEvent", "cudaEventQuery", "cudaEventSynchronize", "cudaMemcpy2DAsync",
            "cudaEventElapsedTime", "cudaStreamDestroy", "cudaGetDeviceProperties", "cudaSetDevice"} <= rt.checked


# ---- the TensorRT backend's engine runner --------------------------------------------------------

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


def test_engine_runner_refuses_an_input_outside_the_profile_by_name(host_cuda):
    from contract.graphs import Graph, Tensor
    from runtime.backends.cuda import DeviceArray
    from runtime.backends.tensorrt import EngineRunner
    from runtime.errors import RuntimeSetupError
    cuda = host_cuda()
    graph = Graph("encoder", "encoder", "encoder.engine", (Tensor("frames", ("T", 16, 16, 3), "uint8"),),
                  (Tensor("latents", (1, 48, "F", 8, 8), "float16"),), {"T": {"min": 4, "opt": 8, "max": 12}})
    context = FakeContext()
    runner = EngineRunner(types.SimpleNamespace(cuda=cuda, engines={"encoder": FakeEngine()}), {"encoder": context})
    stream = cuda.new_stream()
    with cuda.on(stream):
        out = runner.run(graph, {"frames": DeviceArray(cuda, (8, 16, 16, 3), "uint8")})["latents"]
    assert (out.shape, out.nbytes, context.enqueued) == ((1, 48, 2, 8, 8), 48 * 2 * 64 * 2, 1)
    with cuda.on(stream), pytest.raises(RuntimeSetupError, match=r"^engine encoder: input frames of shape \[40, 16, 16, 3\] is outside "
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
