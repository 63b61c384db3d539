"""python -m runtime.gpucheck: what only a GPU can show about the runtime's CUDA code, in minutes.

    scripts/gpu-check.sh [OUT]                        # on a machine with an NVIDIA GPU (bounded to 8 min)
    python -m runtime.gpucheck --out DIR [--dry] [--only NAME,...]

Checks (each passes, fails or is skipped with its reason; results.json and log.txt go to --out,
rewritten after each check so a run cut short keeps what it found):
  cuda_plumbing        runtime/backends/cuda.py on the device: the default pool's release threshold
                       read back, cudaMallocAsync / retire / collect on two streams with events (memory
                       in use flat, nothing left waiting), a finalizer run by the garbage collector
                       inside collect(), the pinned pool reusing its buffers, calls from another
                       thread leaving its current device as it was (and, with 2+ GPUs, memory of a
                       device-1 Session landing on device 1)
  tensorrt_session     a whole TensorRT Session (bundle loading, execution contexts, runtime configs
                       and cache, user-managed context memory, device arrays, row copies, uploads,
                       downloads, states, events across stage streams) with standin.py's engines (the
                       torch backend's stage functions on the contexts' device pointers): frames equal
                       to the torch backend's, overlap on and off, two Sessions in two threads; every
                       context buffer used on one stream only; the runtime cache written as Sessions
                       close and loaded by the next load; a full-TensorRT bundle without one
  memory_flat          a stand-in TensorRT Session over --chunks chunks: device memory in use and the
                       allocations waiting to be freed stop growing after the first chunks
  cudagraph_capture    two torch-backend Sessions with CUDA graphs capturing at once in two threads
                       (runtime/backends/torch/cudagraphs.py), frames equal to the eager run's
  profile_sharing      open question: may several Sessions' execution contexts share an engine's
                       single optimization profile, running different shapes at once? Needs TensorRT
                       (tensorrt, else tensorrt_rtx) on the GPU; skipped, saying so, without it
  bench                python -m runtime.bench (the torch backend's GPU ladder) on the tiny preset with
                       a small budget; the 5B ladder is `make bench` (docs/benchmarks.md), longer than
                       this check's budget
--dry runs all of it on the CPU with hostcuda.py in place of cuda-python (every line of the CUDA
plumbing except the CUDA calls themselves) and torch on the CPU, to prove the check's own code;
what needs a real device (CUDA graphs, TensorRT execution) is skipped, saying so.
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np

SIZE, SCALE, CLIP_LEN = (17, 16), 2, 4          # the tiny preset: input 17x16 -> 34x32, chunks of 4 frames
CHECKS = ("cuda_plumbing", "tensorrt_session", "memory_flat", "cudagraph_capture", "profile_sharing", "bench")
MIB = 1 << 20


class Skip(Exception):
    """A check that cannot run here; its message says why."""


class Run:
    def __init__(self, out: Path, dry: bool, chunks: int, budget_s: float):
        self.out, self.dry, self.chunks = out, dry, chunks
        self.deadline = time.monotonic() + budget_s
        self.results = {"dry": dry, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "checks": {}}
        self.log_file = open(out / "log.txt", "a")
        self.device = "cpu" if dry else "cuda:0"
        self._torch_model = None

    def log(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")

    def torch_model(self, **options):
        """The tiny preset (random weights seed 0, fp32) on this run's device, torch backend."""
        from runtime import TorchSource, load_torch
        from runtime.backends.torch import TorchOptions
        if options:
            return load_torch(TorchSource(preset="tiny", seed=0), SIZE, scale=SCALE, clip_len=CLIP_LEN,
                              precision="fp32", device=self.device, options=TorchOptions(**options))
        if self._torch_model is None:
            self._torch_model = self.torch_model(cuda_graphs=False)
        return self._torch_model


def frames(count: int, seed: int = 0) -> np.ndarray:
    width, height = SIZE
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def restore(model, clip: np.ndarray, in_flight=1, overlap=False, pieces=(5, 1, 9, 3)) -> np.ndarray:
    """A Session over `clip`, pushed in uneven pieces."""
    from runtime import Session
    out, at, i = [], 0, 0
    with Session(model, in_flight=in_flight, overlap=overlap) as session:
        while at < len(clip):
            out.append(session.push(clip[at:at + pieces[i % len(pieces)]]))
            at, i = at + pieces[i % len(pieces)], i + 1
        out.append(session.flush())
    return np.concatenate(out)


def differ(a: np.ndarray, b: np.ndarray) -> dict:
    if a.shape != b.shape:
        return {"equal": False, "shapes": [list(a.shape), list(b.shape)]}
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"equal": bool((diff == 0).all()), "max_abs_diff": int(diff.max()), "values_differing": int((diff > 0).sum())}


def grows(samples: list[int], slack: int) -> bool:
    """Memory still growing: the second half's peak above the first half's by more than `slack`."""
    half = len(samples) // 2
    return max(samples[half:]) > max(samples[:half]) + slack


# ---- the checks ------------------------------------------------------------------------------
def cuda_plumbing(run: Run) -> dict:
    from runtime.backends.cuda import KEEP_RESERVED, Cuda, DeviceArray, Event, PinnedPool
    cuda = Cuda(0)
    rt, result = cuda.rt, {"device": cuda.name, "compute_capability": cuda.compute_capability}
    pool = cuda.call(rt.cudaDeviceGetDefaultMemPool, 0)
    threshold = int(cuda.call(rt.cudaMemPoolGetAttribute, pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold))
    result["release_threshold_kept"] = threshold == KEEP_RESERVED
    streams = [cuda.new_stream() for _ in range(2)]
    samples = []
    for i in range(400):
        mine, other = streams[i % 2], streams[(i + 1) % 2]
        with cuda.on(mine):
            array = DeviceArray(cuda, (4 * MIB,), "uint8")
            cuda.call(rt.cudaMemsetAsync, array.ptr, i % 256, array.nbytes, mine.handle)
        other.wait(Event(cuda, timing=False).record(mine))
        array.used_on(other)
        with cuda.on(other):
            cuda.call(rt.cudaMemsetAsync, array.ptr, 0, array.nbytes, other.handle)
        del array
        if i % 8 == 7:
            cuda.collect()
            samples.append(cuda.memory_in_use())
    for s in streams:
        s.synchronize()
    cuda.collect()
    result["memory_in_use_mib"] = {"first": samples[0] // MIB, "peak": max(samples) // MIB, "last": samples[-1] // MIB}
    result["memory_flat"] = not grows(samples, 64 * MIB)
    result["left_waiting"] = len(cuda._waiting) + len(cuda._retired)
    reserved = getattr(rt.cudaMemPoolAttr, "cudaMemPoolAttrReservedMemCurrent", None)
    if reserved is not None:       # the pool keeps what it reserved after everything was freed and synced
        result["pool_reserved_after_free_mib"] = int(cuda.call(rt.cudaMemPoolGetAttribute, pool, reserved)) // MIB

    # a DeviceArray finalized by the garbage collector while this thread is inside collect()
    with cuda.on(streams[0]):
        cycle = [DeviceArray(cuda, (MIB,), "uint8")]
    cycle.append(cycle)
    gc.disable()
    try:
        del cycle
        finished = threading.Event()
        worker = threading.Thread(target=lambda: (cuda.collect(), gc.collect(), cuda.collect(), finished.set()),
                                  daemon=True)
        worker.start()
        gc.collect()                        # may run the finalizer here, or the worker's collect() meets it
        result["finalizer_during_collect_ok"] = finished.wait(30)
    finally:
        gc.enable()

    # the pinned pool reuses a buffer once its copy is done
    pinned, buffers = PinnedPool(cuda), set()
    with cuda.on(streams[1]):
        for _ in range(100):
            host = pinned.array((4, 64, 64, 3))
            buffers.add(host.ctypes.data)
            pinned.release(host, after=Event(cuda, timing=False).record(streams[1]))
    streams[1].synchronize()
    pinned.close()
    result["pinned_buffers_for_100_uploads"] = len(buffers)

    # another thread: the call runs on this Cuda's device, the thread's own device is left as it was
    seen = {}

    def other_thread():
        before = rt.cudaGetDevice()[1]
        with cuda.on(streams[0]):
            DeviceArray(cuda, (MIB,), "uint8")
        seen["restored"] = rt.cudaGetDevice()[1] == before
    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    result["thread_device_restored"] = seen.get("restored", False)
    count = rt.cudaGetDeviceCount()[1]
    result["devices"] = count
    if count > 1 and hasattr(rt, "cudaPointerGetAttributes"):
        second = Cuda(1)

        def on_second():
            with second.on(second.new_stream()):
                array = DeviceArray(second, (MIB,), "uint8")
                seen["device_of_memory"] = second.call(rt.cudaPointerGetAttributes, array.ptr).device
        t = threading.Thread(target=on_second)
        t.start()
        t.join()
        result["device1_memory_on_device1"] = seen.get("device_of_memory") == 1
    ok = (result["release_threshold_kept"] and result["memory_flat"] and result["left_waiting"] == 0
          and result["finalizer_during_collect_ok"] and result["pinned_buffers_for_100_uploads"] <= 2
          and result["thread_device_restored"] and result.get("device1_memory_on_device1", True))
    return {"status": "pass" if ok else "fail", **result}


def _standin(run: Run, flavour: str, name: str):
    from runtime import load_bundle
    from .standin import StandInTensorRT, use_standin_tensorrt, write_standin_bundle
    torch_model = run.torch_model()
    trt = StandInTensorRT(torch_model)
    path = write_standin_bundle(torch_model, trt, run.out / "bundles" / f"{name}.plan", flavour)
    undo = use_standin_tensorrt(trt)
    try:
        return trt, load_bundle(path)
    finally:
        undo()


def tensorrt_session(run: Run) -> dict:
    os.environ["SWIFTVR_CACHE_DIR"] = str(run.out / "cache")
    torch_model = run.torch_model()
    clip = frames(4 * CLIP_LEN + 7, seed=1)
    expected = restore(torch_model, clip)
    trt, model = _standin(run, "tensorrt-rtx", "standin-rtx")
    result = {"sequential": differ(restore(model, clip), expected),
              "overlap": differ(restore(model, clip, in_flight=3, overlap=True), expected)}
    outs = [None, None]

    def session(i):
        outs[i] = restore(model, clip, in_flight=3, overlap=True, pieces=(3 + i,))
    threads = [threading.Thread(target=session, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result["two_threads"] = [differ(o, expected) if o is not None else {"equal": False} for o in outs]
    # A buffer shared by contexts is safe only while their calls never overlap: one stream per buffer.
    result["context_buffers"] = {"buffers": len(trt.buffer_streams),
                                 "each_on_one_stream": all(len(s) == 1 for s in trt.buffer_streams)}
    cache = model.runtime_cache
    result["runtime_cache"] = {"file": str(cache.path), "written": cache.path.is_file(),
                               "contexts_with_config": trt.configs_used, "contexts": trt.contexts_made}
    _, again = _standin(run, "tensorrt-rtx", "standin-rtx")
    result["runtime_cache"]["loaded_by_next_load"] = again.runtime_cache.cache.shapes == cache.cache.shapes != set()
    plain_trt, plain = _standin(run, "tensorrt", "standin-full")
    result["full_tensorrt"] = {**differ(restore(plain, clip), expected), "runtime_cache": plain.runtime_cache,
                               "contexts_with_config": plain_trt.configs_used}
    equal = [result["sequential"], result["overlap"], *result["two_threads"], result["full_tensorrt"]]
    ok = (all(r["equal"] for r in equal) and result["runtime_cache"]["written"]
          and result["runtime_cache"]["loaded_by_next_load"] and trt.configs_used == trt.contexts_made
          and plain.runtime_cache is None and plain_trt.configs_used == 0
          and result["context_buffers"]["each_on_one_stream"])
    return {"status": "pass" if ok else "fail", **result}


def memory_flat(run: Run) -> dict:
    from runtime import Session
    _, model = _standin(run, "tensorrt-rtx", "standin-rtx")
    clip = frames(CLIP_LEN, seed=2)
    samples, waiting = [], []
    with Session(model, in_flight=3, overlap=True) as session:
        session.push(frames(CLIP_LEN + 5, seed=3))
        for _ in range(run.chunks):
            session.push(clip)
            samples.append(model.cuda.memory_in_use())
            waiting.append(len(model.cuda._waiting) + len(model.cuda._retired))
        session.flush()
        pinned = len(session.runner.kernels.pinned.free) + len(session.runner.kernels.pinned.busy)
    growing = grows(samples, 16 * MIB)
    # allocations waiting for their last use: a few chunks' worth, not a number that keeps rising
    return {"status": "fail" if growing or grows(waiting, 8) else "pass", "chunks": run.chunks,
            "memory_in_use_mib": {"first": samples[0] // MIB, "peak": max(samples) // MIB, "last": samples[-1] // MIB},
            "most_waiting_to_be_freed": max(waiting), "pinned_buffers": pinned}


def cudagraph_capture(run: Run) -> dict:
    if run.dry:
        raise Skip("CUDA graphs need a GPU (tests/test_cudagraphs.py checks the capture bookkeeping on the CPU)")
    clip = frames(3 * CLIP_LEN + 6, seed=4)
    expected = restore(run.torch_model(), clip, in_flight=3, overlap=True)
    graphs = run.torch_model(cuda_graphs=True)
    outs, errors = [None, None], []
    barrier = threading.Barrier(2)

    def session(i):
        try:
            barrier.wait(30)         # start together: both streams capture their first shapes at once
            outs[i] = restore(graphs, clip, in_flight=3, overlap=True)
        except Exception as e:       # reported in the result
            errors.append(repr(e))
    threads = [threading.Thread(target=session, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {"errors": errors, "sessions": [differ(o, expected) if o is not None else {"equal": False} for o in outs]}
    # The same kernels replayed: equal frames, unless a library picks another algorithm under capture.
    ok = not errors and all(r.get("max_abs_diff", 99) <= 1 for r in result["sessions"])
    return {"status": "pass" if ok else "fail", **result}


def profile_sharing(run: Run) -> dict:
    """Two execution contexts of one engine with one optimization profile, different shapes, at once."""
    trt = None
    for module in ("tensorrt", "tensorrt_rtx"):
        try:
            trt = __import__(module)
            break
        except ImportError:
            continue
    if trt is None:
        raise Skip("TensorRT is not installed here (neither tensorrt nor tensorrt_rtx): the open question "
                   "stays open")
    from onnx import TensorProto, helper

    from engines.flavours import set_target
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])],
                              "twice_plus_one", [x], [y], [two, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        raise RuntimeError(f"the ONNX parser refused the test graph: {parser.get_error(0)}")
    config = builder.create_builder_config()
    flavour = "tensorrt-rtx" if trt.__name__ == "tensorrt_rtx" else "tensorrt"
    if run.dry:
        set_target(trt, config, flavour, ("8.9",))
    elif flavour == "tensorrt-rtx":
        from runtime.backends.cuda import Cuda
        set_target(trt, config, flavour, (Cuda(0).compute_capability,))
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 64), (4, 64), (8, 64))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT could not build the test engine")
    if run.dry:
        raise Skip(f"the {trt.__name__} engine is built ({plan.nbytes} bytes); running two contexts needs a GPU")
    from runtime.backends.cuda import Cuda, DeviceArray
    cuda = Cuda(0)
    with cuda.current():
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        contexts = [engine.create_execution_context() for _ in range(2)]
    streams = [cuda.new_stream() for _ in range(2)]
    rows, wrong = (2, 7), 0
    for _ in range(50):
        jobs = []
        for context, stream, n in zip(contexts, streams, rows):
            with cuda.on(stream):
                host = np.random.default_rng(n).standard_normal((n, 64)).astype(np.float32)
                inp, out = DeviceArray(cuda, host.shape, "float32"), DeviceArray(cuda, host.shape, "float32")
                cuda.call(cuda.rt.cudaMemcpyAsync, inp.ptr, host.ctypes.data, host.nbytes,
                          cuda.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle)
                context.set_input_shape("x", host.shape)
                context.set_tensor_address("x", inp.ptr)
                context.set_tensor_address("y", out.ptr)
                if not context.execute_async_v3(stream.handle):
                    raise RuntimeError("execute_async_v3 refused a second context on the shared profile")
                jobs.append((host, inp, out, stream))
        for host, inp, out, stream in jobs:
            got = np.empty_like(host)
            with cuda.on(stream):
                cuda.call(cuda.rt.cudaMemcpyAsync, got.ctypes.data, out.ptr, got.nbytes,
                          cuda.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle)
                stream.synchronize()
            wrong += not np.allclose(got, host * 2 + 1)
        rows = rows[::-1]
    return {"status": "pass" if wrong == 0 else "fail", "module": f"{trt.__name__} {trt.__version__}",
            "answer": "yes: two contexts on one profile ran different shapes at once, 100 results right"
            if wrong == 0 else f"no: {wrong} of 100 results wrong", "profiles": engine.num_optimization_profiles}


def bench(run: Run) -> dict:
    budget = max(30, int(run.deadline - time.monotonic() - 30))
    json_path = run.out / "bench.json"
    if run.dry:
        args = ["--device", "cpu", "--res", "64x64", "--clip-len", "4", "--variants", "eager", "--repeats", "1",
                "--warmup", "0", "--first-repeats", "1", "--no-ceilings", "--threads", "1"]
    else:
        args = ["--res", "512x288", "--clip-len", "8", "--variants", "eager,fused-qkv,channels-last,cuda-graphs",
                "--repeats", "3", "--warmup", "1", "--first-repeats", "1"]
    command = [sys.executable, "-m", "runtime.bench", "--preset", "tiny", "--scale", "2", "--budget-s",
               str(budget // 2), "--json", str(json_path), *args]
    run.log("  " + " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, timeout=budget)
    (run.out / "bench.log").write_text(done.stdout + done.stderr)
    return {"status": "pass" if done.returncode == 0 and json_path.is_file() else "fail", "exit": done.returncode,
            "json": str(json_path), "tail": (done.stdout + done.stderr)[-1500:],
            "5b_ladder": "make bench BENCH_ARGS='--json OUT/bench-5b.json' (docs/benchmarks.md): minutes per resolution"}


# ---- running them ---------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m runtime.gpucheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "build/gpu-check", help="results folder (default $OUT)")
    p.add_argument("--dry", action="store_true", help="on the CPU, with hostcuda.py in place of CUDA")
    p.add_argument("--only", help=f"comma separated, of {','.join(CHECKS)}")
    p.add_argument("--chunks", type=int, help="memory_flat's chunks (default 300 on a GPU, 24 dry)")
    p.add_argument("--budget-s", type=float, default=450, help="the whole run's time (default 450)")
    a = p.parse_args(argv)
    a.only = [n.strip() for n in a.only.split(",")] if a.only else list(CHECKS)
    unknown = set(a.only) - set(CHECKS)
    if unknown:
        p.error(f"unknown checks {sorted(unknown)}; known: {', '.join(CHECKS)}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    undo = None
    if a.dry:
        from .hostcuda import HostCudart, use_host_cuda
        undo = use_host_cuda(HostCudart(devices=1))
    else:
        import torch
        if not torch.cuda.is_available():
            print("error: torch sees no CUDA GPU here; run with --dry to check this script on a CPU", file=sys.stderr)
            return 2
    run = Run(out, a.dry, a.chunks or (24 if a.dry else 300), a.budget_s)
    run.log(f"runtime.gpucheck {'dry run (CPU, host stand-in for CUDA)' if a.dry else 'on the GPU'}: {', '.join(a.only)}")
    try:
        for name in a.only:
            if time.monotonic() > run.deadline:
                run.results["checks"][name] = {"status": "skipped", "why": "out of time (--budget-s)"}
                continue
            start = time.monotonic()
            try:
                result = globals()[name](run)
            except Skip as e:
                result = {"status": "skipped", "why": str(e)}
            except Exception as e:          # a check that breaks is a failure with its traceback
                result = {"status": "fail", "error": repr(e), "traceback": traceback.format_exc()[-3000:]}
            result["seconds"] = round(time.monotonic() - start, 1)
            run.results["checks"][name] = result
            run.save()
            why = result.get("why") or result.get("error") or ""
            run.log(f"{result['status'].upper():8s} {name} ({result['seconds']} s) {why}")
            if result["status"] == "fail":
                run.log(json.dumps({k: v for k, v in result.items() if k != "traceback"}, default=str)[:2000])
                run.log(result.get("traceback", ""))
    finally:
        if undo:
            undo()
    statuses = [r["status"] for r in run.results["checks"].values()]
    run.log(f"{statuses.count('pass')} passed, {statuses.count('fail')} failed, {statuses.count('skipped')} skipped "
            f"(results: {out / 'results.json'})")
    return 1 if "fail" in statuses else 0
