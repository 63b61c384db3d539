"""runtime/backends/torch/cudagraphs.py: captures from several Sessions' threads at once, without a
GPU: torch's tensors on the CPU, and a stand-in for torch.cuda that refuses what CUDA refuses (a
capture begun on a stream that is already capturing) and counts device-wide synchronizations. Its
torch.cuda.graph is torch 2.13's (torch/cuda/graphs.py): one class-wide default capture stream, and
a device synchronize plus empty_cache on entry. The real captures run in python -m runtime.gpucheck."""
import threading
from types import SimpleNamespace

import torch

from runtime.backends.torch.cudagraphs import CudaGraphStage


class FakeCuda:
    def __init__(self):
        self.local = threading.local()
        self.capturing, self.capture_streams, self.synchronized = set(), [], 0
        self.most_at_once = 0
        self.lock = threading.Lock()
        fake = self

        class Stream:
            def __init__(self, device=None):
                self.device = device

            def wait_stream(self, other):
                pass

        class StreamContext:
            def __init__(self, stream):
                self.stream = stream

            def __enter__(self):
                self.before = fake.current_stream()
                fake.local.stream = self.stream

            def __exit__(self, *exc):
                fake.local.stream = self.before

        class CUDAGraph:
            def capture_begin(self, pool=None, capture_error_mode="global"):
                stream = fake.current_stream()
                with fake.lock:
                    if stream in fake.capturing:
                        raise RuntimeError("operation not permitted when stream is capturing")
                    fake.capturing.add(stream)
                    fake.capture_streams.append(stream)
                    fake.most_at_once = max(fake.most_at_once, len(fake.capturing))
                self.stream, self.calls, fake.local.graph = stream, [], self

            def capture_end(self):
                with fake.lock:
                    fake.capturing.discard(self.stream)
                fake.local.graph = None

            def replay(self):
                for fn, args, outputs in self.calls:
                    for out, value in zip(outputs, fn(*args)):
                        out.copy_(value)

        class graph:                       # torch 2.13's torch.cuda.graph, as it behaves
            default_capture_stream = None

            def __init__(self, cuda_graph, pool=None, stream=None, capture_error_mode="global"):
                if stream is None and graph.default_capture_stream is None:
                    graph.default_capture_stream = Stream()
                self.stream = stream or graph.default_capture_stream
                self.cuda_graph, self.pool, self.mode = cuda_graph, pool, capture_error_mode

            def __enter__(self):
                fake.synchronize()
                self.context = StreamContext(self.stream)
                self.context.__enter__()
                self.cuda_graph.capture_begin(self.pool, capture_error_mode=self.mode)

            def __exit__(self, *exc):
                self.cuda_graph.capture_end()
                self.context.__exit__(*exc)

        self.Stream, self.stream, self.CUDAGraph, self.graph = Stream, StreamContext, CUDAGraph, graph
        self.default = Stream()

    def current_stream(self, device=None):
        return getattr(self.local, "stream", self.default)

    def synchronize(self, device=None):
        self.synchronized += 1

    def graph_pool_handle(self):
        return object()


def test_two_sessions_capture_at_once_on_their_own_streams():
    cuda = FakeCuda()
    fake_torch = SimpleNamespace(cuda=cuda, empty=torch.empty)
    barrier = threading.Barrier(2)

    def math(x):
        return (x * 2 + 1,)

    def stage(x):
        out = math(x)
        graph = getattr(cuda.local, "graph", None)
        if graph is not None:         # being captured: the graph replays this on the same buffers
            graph.calls.append((math, (x,), out))
            try:                      # both threads capturing at once, if nothing keeps them apart
                barrier.wait(timeout=0.3)
            except threading.BrokenBarrierError:
                pass
        return out
    results, errors = {}, []

    def session(seed):
        try:
            stages = CudaGraphStage(stage, "cuda:0", torch=fake_torch)
            x = torch.arange(4.0) + seed
            results[seed] = [stages(x + i)[0] for i in range(4)]     # eager, capture, replay, replay
        except Exception as e:        # reported below
            errors.append(e)
    threads = [threading.Thread(target=session, args=(seed,)) for seed in (0, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for seed, outs in results.items():
        for i, out in enumerate(outs):
            torch.testing.assert_close(out, (torch.arange(4.0) + seed + i) * 2 + 1, rtol=0, atol=0)
    streams = cuda.capture_streams
    assert len(streams) == 2 and streams[0] is not streams[1]          # each stage's own capture stream
    assert cuda.most_at_once == 1                                       # one capture at a time
    assert cuda.synchronized == 0                                       # no device-wide stall
