"""python -m engines.verify BUNDLE [--export DIR]: do this bundle's engines compute what its ONNX graphs do?

Runs every engine of the bundle where it is meant to run (TensorRT or TensorRT-RTX engines on this
machine's GPU; a `cpu` bundle's graphs in ONNX Runtime) against the export's ONNX graph in ONNX
Runtime, on a short synthetic stream (FIRST, MIDDLE ..., LAST chunk, so every DiT latent count of the
chunk protocol) with the encoder and decoder states carried from chunk to chunk:
  * per graph: every call the reference made in the stream is replayed on the engine with the same
    inputs (the reference's latents and states), so errors do not add up from graph to graph;
  * end to end: the engines run the whole stream on their own (their own latents and states) and
    the frames are compared.
Runners and comparison are Polygraphy's (OnnxrtRunner; TrtRunner over EngineFromBytes;
Comparator.compare_accuracy with SimpleCompareFunc on the maximum absolute error). Tolerances per
precision are export.verify.TOLERANCES, the ones of the README's correctness ladder.

Exit status: 0 every tolerance holds, 1 a tolerance is exceeded, 2 it cannot run here (usage, no GPU,
a missing package, no export folder).
"""
import argparse
import contextlib
import ctypes
import functools
import hashlib
import sys
from pathlib import Path

import numpy as np

from contract.bundle import BundleError, open_bundle
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

def _ort():
    import onnxruntime
    return onnxruntime


def _session_options():
    options = _ort().SessionOptions()
    options.log_severity_level = 3
    return options


def _providers() -> list:
    # The reference runs on CUDA when onnxruntime-gpu is there: a large DiT takes minutes per call on a CPU.
    available = _ort().get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def reference_runners(export, precision: str) -> dict:
    """Polygraphy OnnxrtRunners over the export's graphs, by graph name. A bf16 graph runs with every
    bf16 tensor widened to float32: ONNX Runtime has no bf16 kernels (as export.verify does)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    def session(path: Path):
        def make():
            if precision == "bf16":
                import onnx
                from export.verify import widen_bf16
                model = widen_bf16(onnx.load(str(path))).SerializeToString()
                return _ort().InferenceSession(model, _session_options(), providers=_providers())
            return _ort().InferenceSession(str(path), _session_options(), providers=_providers())
        return make
    return {spec.name: OnnxrtRunner(session(spec.path), name=f"{REFERENCE}:{spec.name}") for spec in export.graphs}


def bundle_runners(bundle) -> dict:
    """Polygraphy runners over the bundle's engines, by engine name: TrtRunner(EngineFromBytes) for
    TensorRT flavours, OnnxrtRunner over the graphs (and their external data) read from a cpu bundle."""
    manifest = bundle.manifest
    flavour = manifest["target"]["flavour"]
    if flavour == "onnx":
        from polygraphy.backend.onnxrt import OnnxrtRunner

        def session(entry):
            def make():
                options = _session_options()
                data = [f for f in entry["files"] if f != entry["member"]]
                views = [bundle.view(f) for f in data]
                if data:
                    options.add_external_initializers_from_files_in_memory(data, views, [len(v) for v in views])
                made = _ort().InferenceSession(bundle.read(entry["member"]), options, providers=["CPUExecutionProvider"])
                for view in views:   # ONNX Runtime has copied the weights
                    view.release()
                return made
            return make
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


# ---- a stream through one set of runners ----------------------------------------------------------

class Chain:
    """The bundle's graphs as export.verify.run_stream drives them, each call through a Polygraphy
    runner. Values between calls are numpy in the graph's dtype (bf16 carried as float32); `record`
    keeps every call's (graph, inputs, outputs)."""

    def __init__(self, manifest: dict, runners: dict, record: bool = False, bf16_as_torch: bool = False):
        from contract.graphs import contract_from_manifest
        self.manifest, self.runners, self.bf16_as_torch = manifest, runners, bf16_as_torch
        self.engines = {e["name"]: e for e in manifest["engines"]}
        self.contract = contract_from_manifest(manifest, "the bundle manifest")
        self.calls = [] if record else None

    @staticmethod
    def numpy_dtype(dtype: str):
        return np.float32 if dtype == "bfloat16" else np.dtype(dtype)

    def call(self, name: str, values: dict) -> dict:
        entry, runner = self.engines[name], self.runners[name]
        feeds = {t["name"]: np.ascontiguousarray(values[t["name"]], self.numpy_dtype(t["dtype"])) for t in entry["inputs"]}
        wanted = [t["name"] for t in entry["outputs"]]
        given = _bf16_as_torch(feeds, entry) if self.bf16_as_torch else feeds
        outputs = {k: _to_numpy(v) for k, v in runner.infer(given).items() if k in wanted}
        if self.calls is not None:
            self.calls.append((name, feeds, outputs))
        return outputs

    def zero_state(self, which: str) -> dict:
        return {s.input: np.zeros(s.shape, self.numpy_dtype(s.dtype)) for s in self.contract.state[which]}

    def _next_state(self, which: str, outputs: dict) -> dict:
        return {s.input: outputs[s.output] for s in self.contract.state[which]}

    def encode(self, frames, state):
        out = self.call(self.contract.encoder.name, {"frames": frames, **state})
        return out["latents"], self._next_state("encoder", out)

    def dit(self, latents):
        values = {"latents": latents}
        for part in self.contract.chain(latents.shape[2]):
            values.update(self.call(part.name, values))
        return values["restored"], {k: v for k, v in values.items() if k.startswith("hidden")}

    def decode(self, latents, state):
        out = self.call(self.contract.decoder.name, {"latents": latents, **state})
        return out["frames"], self._next_state("decoder", out)


def _bf16_as_torch(feeds: dict, entry: dict) -> dict:
    """TrtRunner takes bf16 inputs as torch tensors (numpy has no bf16); the rest stays numpy."""
    bf16 = {t["name"] for t in entry["inputs"] if t["dtype"] == "bfloat16"}
    if not bf16:
        return feeds
    import torch
    return {k: torch.from_numpy(v).to(torch.bfloat16) if k in bf16 else v for k, v in feeds.items()}


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):   # a torch tensor (bf16 outputs of TrtRunner)
        value = value.detach().cpu()
        return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.array(value, copy=True)   # TrtRunner reuses its output buffers


def synthetic_video(manifest: dict, chunks: int, seed: int) -> np.ndarray:
    """Random frames for FIRST, (chunks - 2) MIDDLE and a LAST chunk of 5 frames."""
    chunk = manifest["chunk"]
    width, height = manifest["sizes"]["input_size"]
    count = chunk["clip_len"] + 4 + (chunks - 2) * chunk["clip_len"] + 5
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


# ---- comparison and report ------------------------------------------------------------------------

def compare(reference: list[dict], candidate: list[dict], tolerances: dict, ref_name: str, cand_name: str):
    """Polygraphy's comparison of two runs (lists of per-call output dicts): per output, the worst
    max |difference| over the calls and whether each call held its tolerance."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc
    results = RunResults()
    results.append((ref_name, [IterationResult(o, runner_name=ref_name) for o in reference]))
    results.append((cand_name, [IterationResult(o, runner_name=cand_name) for o in candidate]))
    atol = {name: tolerances[tolerance_kind(name)] for name in reference[0]}
    with np.errstate(invalid="ignore", divide="ignore"):   # relative errors of equal zeros: not used (rtol 0)
        accuracy = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=atol, rtol=0.0, check_error_stat="max"))
    worst = {}
    for per_call in accuracy[0][(ref_name, cand_name)]:   # one AccuracyResult per compare function
        for name, result in per_call.items():
            err, ok = worst.get(name, (0.0, True))
            worst[name] = (max(err, result.max_absdiff), ok and bool(result))
    return {name: (err, atol[name], ok) for name, (err, ok) in worst.items()}


def verify(bundle_path, export_dir=None, chunks: int = 3, seed: int = 0, device: int = 0,
           search=DEFAULT_EXPORTS) -> bool:
    """Print the report; True when every tolerance holds. CannotRun when it cannot run here."""
    from export.verify import TOLERANCES, run_stream
    from polygraphy.logger import G_LOGGER
    # Our report, not Polygraphy's per-output log (its failures raise PolygraphyException anyway).
    G_LOGGER.module_severity = G_LOGGER.CRITICAL

    try:
        bundle = open_bundle(bundle_path)
    except (BundleError, OSError) as e:
        raise CannotRun(str(e)) from None
    with bundle:
        manifest = bundle.manifest
        target, precision = manifest["target"], manifest["precision"]
        if precision not in TOLERANCES:
            raise CannotRun(f"no tolerances for precision {precision!r} (known: {', '.join(TOLERANCES)})")
        if target["flavour"] == "onnx":
            if precision == "bf16":
                raise CannotRun("a bf16 cpu bundle cannot run: ONNX Runtime has no bf16 kernels")
            where = "ONNX Runtime (CPU)"
        else:
            where = check_gpu(manifest, device)
        export = find_export(manifest, export_dir, search)
        engines = [e["name"] for e in manifest["engines"]]
        specs = {spec.name: spec for spec in export.graphs}
        if sorted(specs) != sorted(engines):
            raise CannotRun(f"{export.path} has graphs {sorted(specs)}; the bundle has engines {sorted(engines)}")
        tolerances = TOLERANCES[precision]
        print(f"bundle {bundle.path}: {target['flavour']} for {target['gpu']}, {precision}, run on {where}")
        print(f"reference: {export.path} in ONNX Runtime ({', '.join(_providers())})"
              + (", bf16 widened to float32" if precision == "bf16" else ""))
        changed = [e["name"] for e in manifest["engines"] if graph_sha256(specs[e["name"]]) != e.get("graph_sha256")]
        if changed:
            print(f"NOTE: graphs {changed} are not the ones this bundle was built from (sha256 differs)")

        chunk = manifest["chunk"]
        video = synthetic_video(manifest, chunks, seed)
        reference = Chain(manifest, reference_runners(export, precision), record=True)
        with contextlib.ExitStack() as active:
            for runner in reference.runners.values():
                active.enter_context(runner)
            want, planned = run_stream(reference, video, chunk["clip_len"], chunk["dit_overlap"])

        candidate = Chain(manifest, bundle_runners(bundle), bf16_as_torch=target["flavour"] != "onnx")
        per_graph = {}
        with contextlib.ExitStack() as active:
            for runner in candidate.runners.values():
                active.enter_context(runner)
            for name, feeds, outputs in reference.calls:
                calls = per_graph.setdefault(name, ([], []))
                calls[0].append(outputs)
                calls[1].append(candidate.call(name, feeds))
            got, _ = run_stream(candidate, video, chunk["clip_len"], chunk["dit_overlap"])

    kinds = " ".join(c.kind for c in planned)
    print(f"stream: {len(video)} synthetic frames (seed {seed}), chunks {kinds}, states carried")
    print(f"  {'graph':<18}{'calls':>6}  {'output (worst)':<22}{'max err':>11}{'tolerance':>11}")
    failed = 0
    for name in engines:
        if name not in per_graph:
            print(f"  {name:<18}{0:>6}  not called by this stream (more chunks, or another overlap, would)")
            continue
        reference_outputs, bundle_outputs = per_graph[name]
        result = compare(reference_outputs, bundle_outputs, tolerances, REFERENCE, "bundle")
        output = max(result, key=lambda k: result[k][0] / result[k][1] if result[k][1] else result[k][0])
        ok = all(r[2] for r in result.values())
        failed += not ok
        err, tol, _ = result[output]
        print(f"  {name:<18}{len(reference_outputs):>6}  {output:<22}{err:>11.3g}{tol:>11.3g}  {'ok' if ok else 'FAIL'}")
    end = compare([{"frames": want}], [{"frames": got}], tolerances, REFERENCE, "bundle")["frames"]
    failed += not end[2]
    differ = float(np.mean(got != want)) if got.shape == want.shape else 1.0
    print(f"  {'end to end':<18}{len(planned):>6}  {'frames (own states)':<22}{end[0]:>11.3g}{end[1]:>11.3g}  "
          f"{'ok' if end[2] else 'FAIL'}  {differ:.2%} of values differ")
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
        return 0 if verify(a.bundle, a.export, max(3, a.chunks), a.seed, a.device) else 1
    except (CannotRun, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PolygraphyException as e:   # e.g. an engine this TensorRT cannot load
        print(f"error: Polygraphy: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
