"""python -m engines.verify BUNDLE [--export DIR]: do this bundle's engines compute what its ONNX graphs do?

Runs every engine of the bundle where it is meant to run (TensorRT or TensorRT-RTX engines on this
machine's GPU; a `cpu` bundle's graphs in ONNX Runtime) against the export's ONNX graph in ONNX
Runtime, on a short synthetic stream (FIRST, MIDDLE ..., LAST chunk, so every DiT latent count of the
chunk protocol) with the encoder and decoder states carried from chunk to chunk:
  * per graph: every call the reference made in the stream is replayed on the engine with the same
    inputs (the reference's latents and states), so errors do not add up from graph to graph;
  * end to end: the engines run the whole stream on their own (their own latents and states) and
    the frames are compared.
The runners are Polygraphy's (OnnxrtRunner over contract/onnxruntime.py's sessions; TrtRunner over
EngineFromBytes, on GPU --device), each driven through contract/chain.py's GraphChain as the runtime
drives its engines. Errors are export.verify.compare_arrays' maximum absolute differences, held to
export.verify.TOLERANCES for the bundle's precision (the README's correctness ladder).

TrtRunner loads the CUDA runtime library (libcudart.so) itself: pip's nvidia-cuda-runtime provides it
(CUDA 13: site-packages/nvidia/cu13/lib, which this command adds to Polygraphy's search).

Exit status: 0 every tolerance holds, 1 a tolerance is exceeded, 2 it cannot run here (usage, no GPU,
a missing package, no export folder).
"""
import argparse
import contextlib
import ctypes
import functools
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from contract.bundle import BundleError, open_bundle
from contract.chain import GraphChain, HostArrays, host_feeds, run_stream
from contract.graphs import contract_from_manifest
from contract.onnxruntime import bundle_session, graph_session, session_options
from export.verify import compare_arrays
from engines.export_folder import graph_sha256, read_export
from engines.flavours import INSTALL_HINTS, MODULES

DEFAULT_EXPORTS = Path(__file__).resolve().parents[1] / "exports"   # where `make engine` keeps exports
REFERENCE = "onnxruntime"


class CannotRun(Exception):
    """Verification cannot run on this machine or with these arguments (exit status 2)."""


def tolerance_kind(output: str) -> str:
    """Which export.verify.TOLERANCES entry an output is held to."""
    if output == "frames":
        return "frames"
    if output.startswith("state_out."):
        return "state"
    if output.startswith("hidden"):
        return "hidden"
    return "latents"   # encoder `latents`, DiT `restored`


# ---- where the pieces come from ----------------------------------------------------------------

def find_export(manifest: dict, export_dir=None, search=DEFAULT_EXPORTS):
    """The export folder the bundle was built from: the one given, else the one under `search` whose
    export.json has the sha256 the manifest records."""
    if export_dir is not None:
        return read_export(export_dir)
    want = (manifest.get("export") or {}).get("export_json_sha256")
    for meta in sorted(Path(search).glob("*/export.json")) if want and Path(search).is_dir() else []:
        if hashlib.sha256(meta.read_bytes()).hexdigest() == want:
            return read_export(meta.parent)
    raise CannotRun(f"no export folder given, and none under {search} is the one this bundle was built from "
                    f"(export.json sha256 {str(want)[:16]}...): give it with --export DIR")


def _driver_gpu(device: int) -> tuple[str, str]:
    """(name, compute capability) of CUDA device `device`, asked of the driver itself (libcuda), so
    that this check needs no CUDA Python package."""
    try:
        cuda = ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        raise CannotRun("no NVIDIA GPU driver on this machine (libcuda not found)") from None
    count, handle = ctypes.c_int(0), ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        raise CannotRun("no NVIDIA GPU on this machine (the CUDA driver finds no device)")
    if not 0 <= device < count.value or cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        raise CannotRun(f"no GPU {device}: this machine has {count.value}")
    major, minor, name = ctypes.c_int(0), ctypes.c_int(0), ctypes.create_string_buffer(256)
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, handle)   # COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, handle)   # COMPUTE_CAPABILITY_MINOR
    cuda.cuDeviceGetName(name, 256, handle)
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"


def check_gpu(manifest: dict, device: int = 0) -> str:
    """A one-line description of the GPU the engines will run on, or CannotRun saying why they cannot."""
    target = manifest["target"]
    try:
        name, capability = _driver_gpu(device)
    except CannotRun as e:
        raise CannotRun(f"this bundle holds {target['flavour']} engines for {target['gpu']}, which run only on "
                        f"an NVIDIA GPU: {e}. Verify it on the GPU it is for, or verify a cpu bundle "
                        f"(python -m engines --export DIR --gpu cpu) here.") from None
    wanted = target.get("compute_capabilities") or []
    if wanted and capability not in wanted:
        raise CannotRun(f"this bundle is for {target['gpu']} (SM {', '.join(wanted)}); GPU {device} is {name} "
                        f"(SM {capability}). Build one for it: python -m engines --export DIR --gpu NAME")
    return f"{name} (SM {capability})"


# ---- runners -------------------------------------------------------------------------------------

def reference_providers(device: int) -> list:
    """ONNX Runtime's providers for the reference: CUDA on GPU `device` when onnxruntime-gpu is there
    (a large DiT takes minutes per call on a CPU), then the CPU."""
    import onnxruntime
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return ([("CUDAExecutionProvider", {"device_id": device})] if cuda else []) + ["CPUExecutionProvider"]


def reference_runners(export, precision: str, device: int = 0) -> dict:
    """Polygraphy OnnxrtRunners over the export's graphs, by graph name. A bf16 graph runs with every
    bf16 tensor widened to float32: ONNX Runtime has no bf16 kernels (as export.verify does)."""
    import onnxruntime
    from polygraphy.backend.onnxrt import OnnxrtRunner
    providers = reference_providers(device)

    def session(path: Path):      # made when the runner is activated
        return functools.partial(graph_session, path, session_options(onnxruntime), providers, precision == "bf16")
    return {spec.name: OnnxrtRunner(session(spec.path), name=f"{REFERENCE}:{spec.name}") for spec in export.graphs}


def bundle_runners(bundle) -> dict:
    """Polygraphy runners over the bundle's engines, by engine name: TrtRunner(EngineFromBytes) for
    TensorRT flavours, OnnxrtRunner over the graphs (and their external data) read from a cpu bundle."""
    manifest = bundle.manifest
    flavour = manifest["target"]["flavour"]
    if flavour == "onnx":
        import onnxruntime
        from polygraphy.backend.onnxrt import OnnxrtRunner

        def session(entry):       # made when the runner is activated; the options take its external data
            return lambda: bundle_session(bundle, entry["member"], entry["files"], session_options(onnxruntime),
                                          ["CPUExecutionProvider"])
        return {e["name"]: OnnxrtRunner(session(e), name=f"bundle:{e['name']}") for e in manifest["engines"]}

    import polygraphy.config
    use_rtx = flavour == "tensorrt-rtx"
    if "polygraphy.backend.trt" in sys.modules and polygraphy.config.USE_TENSORRT_RTX != use_rtx:
        raise CannotRun(f"Polygraphy is already set up for {'TensorRT-RTX' if not use_rtx else 'TensorRT'} in this "
                        f"process; run a {flavour} bundle in a fresh one")
    polygraphy.config.USE_TENSORRT_RTX = use_rtx   # read when polygraphy.backend.trt is first imported
    try:
        trt = __import__(MODULES[flavour])
    except ImportError:
        raise CannotRun(f"{flavour} engines need the Python module {MODULES[flavour]!r}: "
                        f"{INSTALL_HINTS[flavour]}") from None
    built = manifest["builder"].get("version")
    if built and built != trt.__version__:
        raise CannotRun(f"the engines were built with {MODULES[flavour]} {built}; this machine has "
                        f"{trt.__version__}, and engines load only in the version that built them")
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    # The engine's bytes are read when its runner is activated (one at a time, not the whole bundle).
    return {e["name"]: TrtRunner(EngineFromBytes(functools.partial(bundle.read, e["member"])),
                                 name=f"{flavour}:{e['name']}") for e in manifest["engines"]}


# Polygraphy's TrtRunner allocates, copies and makes streams with the CUDA runtime library it loads
# itself (ctypes, libcudart.so*) from LD_LIBRARY_PATH, /usr/local/cuda/lib64, /usr/lib, /lib and
# site-packages/nvidia/cuda_runtime/lib (the CUDA 12 wheel's folder). tensorrt-rtx and cuda-python
# link theirs statically and ship none; the CUDA 13 wheel puts it in site-packages/nvidia/cu13/lib.
CUDART_INSTALL = ('pip install "nvidia-cuda-runtime==13.*"   (CUDA 13, as tensorrt-rtx\'s cu13 build; for a CUDA 12 '
                  'TensorRT: pip install nvidia-cuda-runtime-cu12), or put the folder of libcudart.so on '
                  'LD_LIBRARY_PATH')


def wheel_cudart_dirs() -> list[str]:
    """The site-packages/nvidia/cu<N>/lib folders holding libcudart (CUDA 13 and later wheels), newest first."""
    found = []
    for base in filter(None, sys.path):
        for lib in sorted(Path(base).glob("nvidia/cu*/lib/libcudart.so*"), reverse=True):
            if str(lib.parent) not in found:
                found.append(str(lib.parent))
    return found


def use_gpu(device: int):
    """Polygraphy's CUDA runtime, loaded and current on GPU `device`: the TrtRunners activated after
    this (same thread) deserialize, allocate and run their engines there. CannotRun when the library
    is missing (saying what to install) or the GPU cannot be used."""
    searched = os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
    extra = [d for d in wheel_cudart_dirs() if d not in searched]
    if extra:   # read by Polygraphy when it first loads the library, below
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in searched if p] + extra)
    from polygraphy import cuda
    try:
        cudart = cuda.wrapper()
    except OSError as e:
        raise CannotRun(f"Polygraphy's TrtRunner needs the CUDA runtime library libcudart.so, which is not "
                        f"installed here ({e}). Install it: {CUDART_INSTALL}") from None
    status = cudart.handle.cudaSetDevice(ctypes.c_int(device))
    if status != 0:
        cudart.handle.cudaGetErrorString.restype = ctypes.c_char_p
        raise CannotRun(f"the CUDA runtime cannot use GPU {device}: cudaSetDevice: "
                        f"{cudart.handle.cudaGetErrorString(status).decode()} (CUDA error {status})")
    return cudart


def activate(runners: dict, stack: contextlib.ExitStack, gpu: int | None = None) -> None:
    """Activate every runner until `stack` closes. gpu: the device TrtRunners must run on (None: none)."""
    if gpu is not None:
        use_gpu(gpu)
    for runner in runners.values():
        stack.enter_context(runner)


class RunnerGraphs(HostArrays):
    """contract.chain's GraphRunner over active Polygraphy runners, by graph name. Values are numpy in
    the graph's dtype (bf16 carried as float32; bf16_as_torch: given to the runner as torch bf16
    tensors, as TrtRunner takes them). record: keep every call's (graph, inputs, outputs) in `calls`."""

    def __init__(self, runners: dict, record: bool = False, bf16_as_torch: bool = False):
        self.runners, self.bf16_as_torch = runners, bf16_as_torch
        self.calls = [] if record else None

    def run(self, graph, inputs: dict) -> dict:
        feeds = host_feeds(graph, inputs)
        given = _bf16_as_torch(feeds, graph) if self.bf16_as_torch else feeds
        outputs = {k: _to_numpy(v) for k, v in self.runners[graph.name].infer(given).items() if k in graph.output_names}
        if self.calls is not None:
            self.calls.append((graph, feeds, outputs))
        return outputs


def _bf16_as_torch(feeds: dict, graph) -> dict:
    """TrtRunner takes bf16 inputs as torch tensors (numpy has no bf16); the rest stays numpy."""
    bf16 = {t.name for t in graph.inputs if t.dtype == "bfloat16"}
    if not bf16:
        return feeds
    import torch
    return {k: torch.from_numpy(v).to(torch.bfloat16) if k in bf16 else v for k, v in feeds.items()}


def _to_numpy(value) -> np.ndarray:
    """A numpy copy of a runner's output. TrtRunner keeps one host buffer per output name and returns
    views of it (torch tensors when any input was one), so the next call overwrites what it gave."""
    if hasattr(value, "detach"):   # a torch tensor
        value = value.detach().cpu()
        value = (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.array(value, copy=True)


def synthetic_video(manifest: dict, chunks: int, seed: int) -> np.ndarray:
    """Random frames for FIRST, (chunks - 2) MIDDLE and a LAST chunk of 5 frames."""
    chunk = manifest["chunk"]
    width, height = manifest["sizes"]["input_size"]
    count = chunk["clip_len"] + 4 + (chunks - 2) * chunk["clip_len"] + 5
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


# ---- comparison and report ------------------------------------------------------------------------

def worst_per_output(reference: list[dict], candidate: list[dict], tolerances: dict) -> dict:
    """Two runs of one graph (per-call output dicts) compared output by output, each call held to its
    tolerance (export.verify.compare_arrays): {output: (worst max |difference|, tolerance, every call held)}."""
    results = {}
    for want, got in zip(reference, candidate):
        for name in want:
            results.setdefault(name, []).append(
                compare_arrays(name, tolerance_kind(name), got.get(name), want[name], tolerances))
    return {name: (max(r.max_err for r in rs), rs[0].tolerance, all(r.ok for r in rs)) for name, rs in results.items()}


def verify_bundle(bundle_path, export_dir=None, chunks: int = 3, seed: int = 0, device: int = 0,
                  search=DEFAULT_EXPORTS) -> bool:
    """Print the report; True when every tolerance holds. CannotRun when it cannot run here."""
    from export.verify import TOLERANCES
    from polygraphy.logger import G_LOGGER
    G_LOGGER.module_severity = G_LOGGER.CRITICAL       # our report, not Polygraphy's log lines

    try:
        bundle = open_bundle(bundle_path)
    except (BundleError, OSError) as e:
        raise CannotRun(str(e)) from None
    with bundle:
        manifest = bundle.manifest
        target, precision = manifest["target"], manifest["precision"]
        if precision not in TOLERANCES:
            raise CannotRun(f"no tolerances for precision {precision!r} (known: {', '.join(TOLERANCES)})")
        on_gpu = target["flavour"] != "onnx"
        if not on_gpu:
            if precision == "bf16":
                raise CannotRun("a bf16 cpu bundle cannot run: ONNX Runtime has no bf16 kernels")
            where = "ONNX Runtime (CPU)"
        else:
            where = check_gpu(manifest, device)
            use_gpu(device)          # now, not after the reference's stream: CannotRun says what to install
        export = find_export(manifest, export_dir, search)
        engines = [e["name"] for e in manifest["engines"]]
        specs = {spec.name: spec for spec in export.graphs}
        if sorted(specs) != sorted(engines):
            raise CannotRun(f"{export.path} has graphs {sorted(specs)}; the bundle has engines {sorted(engines)}")
        tolerances = TOLERANCES[precision]
        contract = contract_from_manifest(manifest, "the bundle manifest")
        print(f"bundle {bundle.path}: {target['flavour']} for {target['gpu']}, {precision}, run on {where}")
        providers = [p if isinstance(p, str) else f"{p[0]} (device {p[1]['device_id']})"
                     for p in reference_providers(device)]
        print(f"reference: {export.path} in ONNX Runtime ({', '.join(providers)})"
              + (", bf16 widened to float32" if precision == "bf16" else ""))
        changed = [e["name"] for e in manifest["engines"] if graph_sha256(specs[e["name"]]) != e.get("graph_sha256")]
        if changed:
            print(f"NOTE: graphs {changed} are not the ones this bundle was built from (sha256 differs)")

        chunk = manifest["chunk"]
        video = synthetic_video(manifest, chunks, seed)
        reference = RunnerGraphs(reference_runners(export, precision, device), record=True)
        with contextlib.ExitStack() as active:
            activate(reference.runners, active)
            want, planned = run_stream(GraphChain(contract, reference), video, chunk["clip_len"], chunk["dit_overlap"])

        candidate = RunnerGraphs(bundle_runners(bundle), bf16_as_torch=on_gpu)
        per_graph = {}
        with contextlib.ExitStack() as active:
            activate(candidate.runners, active, device if on_gpu else None)
            for graph, feeds, outputs in reference.calls:
                calls = per_graph.setdefault(graph.name, ([], []))
                calls[0].append(outputs)
                calls[1].append(candidate.run(graph, feeds))
            got, _ = run_stream(GraphChain(contract, candidate), video, chunk["clip_len"], chunk["dit_overlap"])

    kinds = " ".join(c.kind for c in planned)
    print(f"stream: {len(video)} synthetic frames (seed {seed}), chunks {kinds}, states carried")
    print(f"  {'graph':<18}{'calls':>6}  {'output (worst)':<22}{'max err':>11}{'tolerance':>11}")
    failed = 0
    for name in engines:
        if name not in per_graph:
            print(f"  {name:<18}{0:>6}  not called by this stream (more chunks, or another overlap, would)")
            continue
        reference_outputs, bundle_outputs = per_graph[name]
        result = worst_per_output(reference_outputs, bundle_outputs, tolerances)
        output = max(result, key=lambda k: result[k][0] / result[k][1] if result[k][1] else result[k][0])
        ok = all(r[2] for r in result.values())
        failed += not ok
        err, tol, _ = result[output]
        print(f"  {name:<18}{len(reference_outputs):>6}  {output:<22}{err:>11.3g}{tol:>11.3g}  {'ok' if ok else 'FAIL'}")
    end = compare_arrays("frames", "frames", got, want, tolerances)
    failed += not end.ok
    differ = float(np.mean(got != want)) if got.shape == want.shape else 1.0
    print(f"  {'end to end':<18}{len(planned):>6}  {'frames (own states)':<22}{end.max_err:>11.3g}{end.tolerance:>11.3g}  "
          f"{'ok' if end.ok else 'FAIL'}  {differ:.2%} of values differ")
    print("PASS" if not failed else f"FAIL: {failed} tolerance(s) exceeded")
    return not failed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle file (python -m engines / make engine)")
    p.add_argument("--export", help="the export folder the bundle was built from (default: the matching one "
                                    f"under {DEFAULT_EXPORTS})")
    p.add_argument("--chunks", type=int, default=3, help="chunks in the stream, >= 3 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic frames")
    p.add_argument("--device", type=int, default=0, help="GPU index (default %(default)s)")
    try:
        a = p.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    from polygraphy.exception import PolygraphyException
    try:
        return 0 if verify_bundle(a.bundle, a.export, max(3, a.chunks), a.seed, a.device) else 1
    except (CannotRun, OSError, ValueError) as e:   # OSError: a file or library that cannot be read or loaded
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PolygraphyException as e:   # e.g. an engine this TensorRT cannot load
        print(f"error: Polygraphy: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
