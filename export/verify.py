"""python -m export.verify OUT_DIR: check an export against the torch model it came from.

1. Structure, every graph: `onnx.checker`, opset >= 23, no control flow or training-only ops, I/O
   names/shapes/dtypes exactly as export.json says, float I/O in the export precision, and per DiT
   part one ONNX `Attention` per self- and cross-attention (2 per block) with no mask input.
2. Numbers (unless --structure-only), in ONNX Runtime (CPU) against torch float32 rebuilt from what
   export.json records (checkpoint folder, or preset + seed), on fresh random inputs:
   * each graph alone: encoder (shortest, regular and longest chunk, carried state), every DiT
     graph (and every part boundary `hidden.<b>`), decoder (1 and clip_len/4+1 latents);
   * a stream of at least 4 chunks (first, middle, middle, last) with state carried chunk to chunk,
     run as contract.chunks.ChunkPlanner plans it, against swiftvr.pipeline.Restorer (protocol "full").
   The graphs run as every stage runs them: contract/chain.py's GraphChain (and its run_stream) over
   contract/onnxruntime.py's sessions.
   The ReAE runs in slices of --reae-slice latent frames per call on both sides (default 1, as the
   runtime's cpu bundles run it; 0: whole chunks, as a GPU bundle that needs no slices runs it), the
   state carried from slice to slice. A slice's activations, not a whole chunk's, are what ONNX
   Runtime and torch hold at once: whole chunks of a 720p export took more than this 24 GiB machine.
   ONNX Runtime's CPU kernels have no bf16 (Conv, MatMul, ...): a bf16 graph runs with every bf16
   tensor widened to float32, which checks its wiring and its bf16-rounded weights and constants
   but not bf16 arithmetic; the output says so. fp32 and fp16 graphs run as they are.
Exit status 1 when a check fails or an error exceeds its tolerance (TOLERANCES, with the reasons).
"""
import argparse
from dataclasses import dataclass
from pathlib import Path
import sys

import numpy as np
import onnx

from contract.chain import GraphChain, host_dtype, run_stream
from contract.graphs import LATENTS, ContractError, contract_from_json, read_export_json, with_reae_slice
from contract.onnxruntime import SessionRunner, export_sessions
from .onnx_graph import CONTROL_FLOW
from .settings import OPSET, ExportError

# Max |ONNX Runtime - torch float32|. Latents, hidden states and ReAE states are O(1); frames are uint8
# grey levels. Worst values measured on the tiny preset (seeded weights, 70x50 and 96x64 outputs, seeds
# 0-2, tests/test_export.py) are in brackets; the tolerances leave 2-5x room for other sizes and seeds.
# fp32: the same math with other kernels (conv algorithms, summation order in matmul and attention):
#   latents [1.9e-6], states [1.2e-5]; a frame value may round the other way at .5: 1 level [1].
# fp16: 11-bit mantissa. Encoder latents [5e-4], DiT [4.4e-3], states [2e-3]; frames [1 level, ~4.5% of
#   values off by one].
# bf16, run widened (see above): only the weights and constants are rounded (8-bit mantissa). Encoder
#   latents [2.8e-3], DiT [1.5e-2], states [1.4e-2], frames [3 levels, mean 0.33]. Real bf16
#   arithmetic (TensorRT) adds rounding of every activation on top; it cannot be measured here.
TOLERANCES = {
    "fp32": {"latents": 1e-4, "state": 1e-4, "hidden": 1e-4, "frames": 1},
    "fp16": {"latents": 1e-2, "state": 1e-2, "hidden": 1e-2, "frames": 2},
    "bf16": {"latents": 5e-2, "state": 5e-2, "hidden": 5e-2, "frames": 5},
}
TRAINING_OPS = ("Dropout", "BatchNormalization", "Gradient", "Momentum", "Adam", "Adagrad")


@dataclass
class Result:
    name: str
    kind: str           # TOLERANCES key, or "check" for pass/fail structure checks
    max_err: float
    mean_err: float
    tolerance: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.max_err <= self.tolerance


def compare_arrays(name: str, kind: str, actual, expected, tolerances: dict, note: str = "") -> Result:
    """Max and mean |actual - expected| (in float64), held to tolerances[kind]; a shape mismatch fails."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return Result(name, kind, float("inf"), float("inf"), tolerances[kind],
                      f"shape {actual.shape} != {expected.shape}")
    err = np.abs(actual - expected)
    return Result(name, kind, float(err.max()) if err.size else 0.0, float(err.mean()) if err.size else 0.0,
                  tolerances[kind], note)


# ---- structure ----------------------------------------------------------------------------------

def graph_entries(meta: dict) -> list[tuple[str, dict]]:
    """(role, entry) for every graph: encoder, the DiT parts of every latent count, decoder."""
    return [(g.role, g.to_json()) for g in contract_from_json(meta, "export.json").graphs()]


def check_structure(folder: Path, meta: dict) -> list[str]:
    """Problems found (empty when all is well); prints one line per graph."""
    problems = []
    dtype = meta["dtype"]
    for role, entry in graph_entries(meta):
        path = folder / entry["file"]
        found = []
        try:
            onnx.checker.check_model(str(path))
        except Exception as e:            # the checker raises several types
            found.append(f"onnx.checker: {str(e).splitlines()[0]}")
        model = onnx.load(str(path), load_external_data=False)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < OPSET:
            found.append(f"opset {opset} < {OPSET}")
        ops = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        bad = sorted(set(ops) & set(CONTROL_FLOW + TRAINING_OPS))
        if bad:
            found.append(f"ops TensorRT should not see: {bad}")
        for which, declared, actual in (("inputs", entry["inputs"], model.graph.input),
                                        ("outputs", entry["outputs"], model.graph.output)):
            described = [_describe(v) for v in actual]
            if described != declared:
                found.append(f"{which} {described} != export.json {declared}")
        floats = {t["dtype"] for t in entry["inputs"] + entry["outputs"] if t["dtype"] not in ("uint8", "int64")}
        if floats - {dtype}:
            found.append(f"float I/O {sorted(floats)} not all {dtype}")
        weights = _weight_bytes_by_type(model)
        attention = ""
        if role == "dit":
            first, end = entry["blocks"]
            nodes = [n for n in model.graph.node if n.op_type == "Attention"]
            if len(nodes) != 2 * (end - first):
                found.append(f"{len(nodes)} Attention nodes, expected {2 * (end - first)} (2 per block)")
            masked = [n.name for n in nodes if len([i for i in n.input if i]) != 3]
            if masked:
                found.append(f"Attention nodes with inputs beyond q, k, v (mask/cache): {masked[:3]}")
            attention = f", {len(nodes)} Attention"
        status = "ok" if not found else "FAIL"
        weights_text = ", ".join(f"{b / 1e6:.1f} MB {t}" for t, b in sorted(weights.items()))
        print(f"  {entry['file']:<22} {status}: {sum(ops.values())} nodes{attention}; weights {weights_text}")
        problems += [f"{entry['file']}: {p}" for p in found]
    for p in problems:
        print(f"    {p}")
    return problems


def _numpy_name(elem_type: int) -> str:
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def _describe(value: onnx.ValueInfoProto) -> dict:
    t = value.type.tensor_type
    return {"name": value.name, "shape": [d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim],
            "dtype": _numpy_name(t.elem_type)}


def _weight_bytes_by_type(model: onnx.ModelProto) -> dict:
    """Initializer bytes per numpy dtype name, from dims alone (external data is not read)."""
    out = {}
    for t in model.graph.initializer:
        name = _numpy_name(t.data_type)
        itemsize = 2 if name == "bfloat16" else onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        out[name] = out.get(name, 0) + int(np.prod(t.dims)) * itemsize
    return out


# ---- ONNX Runtime -------------------------------------------------------------------------------

def export_chain(folder: Path, meta: dict, reae_slice: int = 0) -> GraphChain:
    """The export's graphs in ONNX Runtime (CPU) sessions, chained as the runtime chains them; a bf16
    export runs widened to float32 (ONNX Runtime's CPU kernels have no bf16). reae_slice: latent frames
    per ReAE call (0: whole chunks)."""
    contract = contract_from_json(meta, "export.json")
    if reae_slice:
        contract = with_reae_slice(contract, reae_slice)
    # No arena: the shared one keeps ONNX Runtime's largest run resident while the torch reference then
    # allocates its own, so the two sides' peaks added up (10.7 GiB for a 720p export in slices).
    sessions = export_sessions(folder, contract, widen=meta["precision"] == "bf16", arena=False)
    return GraphChain(contract, SessionRunner(sessions))


# ---- torch reference ----------------------------------------------------------------------------

class TorchReference:
    """The same computations in torch float32 (what the pipeline does), per graph."""

    def __init__(self, meta: dict, reae_slice: int = 0):
        import torch
        from contract.sizes import frame_geometry
        from .weights import source_from_manifest
        self.torch = torch
        source = source_from_manifest(meta["model"])
        if source.sha256() != meta["model"]["checkpoint_sha256"]:
            raise ExportError(f"the weights export.json names ({source.checkpoint or 'random:' + str(source.preset)}) "
                              f"are not the ones exported: sha256 differs")
        self.model = source.torch_model()
        self.geometry = frame_geometry(tuple(meta["input_size"]), tuple(meta["output_size"]))
        self.cond = self.model.transformer.conditioning(self.model.prompt_emb)
        self.reae_slice = reae_slice

    def encode(self, frames: np.ndarray, state: dict):
        from swiftvr.pipeline import encode_in_slices, preprocess
        with self.torch.no_grad():
            x = preprocess(self.torch.from_numpy(frames), self.geometry, self.torch.float32)
            latents, new = encode_in_slices(self.model.reae, x, self._state(state), self.reae_slice)
        return latents.transpose(1, 2).numpy(), {f"state_in.{k}": v.numpy() for k, v in new.items()}

    def dit(self, latents: np.ndarray, boundaries: list[int]):
        t = self.model.transformer
        with self.torch.no_grad():
            z = self.torch.from_numpy(np.asarray(latents, np.float32))
            plan = t.grid_plan(t.token_grid(z.shape), 0)
            x, hidden, start = t.embed(z), {}, 0
            for b in boundaries:
                x = t.run_blocks(x, self.cond, plan, start, b)
                hidden[f"hidden.{b}"], start = x.numpy(), b
            restored = t.restore(z, self.cond, plan)
        return restored.numpy(), hidden

    def decode(self, latents: np.ndarray, state: dict):
        from swiftvr.pipeline import decode_in_slices, to_uint8
        with self.torch.no_grad():
            z = self.torch.from_numpy(np.asarray(latents, np.float32)).transpose(1, 2)
            frames, new = decode_in_slices(self.model.reae, z, self._state(state), self.reae_slice)
        frames = to_uint8(frames, self.geometry, rounding=True).numpy()
        return frames, {f"state_in.{k}": v.numpy() for k, v in new.items()}

    def stream(self, video: np.ndarray, clip_len: int, overlap: int) -> np.ndarray:
        from swiftvr.pipeline import RestoreSettings, Restorer
        restorer = Restorer(self.model, self.geometry.input_size,
                            RestoreSettings(clip_len, overlap, "full", reae_slice=self.reae_slice),
                            output_size=self.geometry.output_size)
        with self.torch.no_grad():
            return self.torch.cat([restorer.push(self.torch.from_numpy(video)), restorer.flush()]).numpy()

    def _state(self, state: dict) -> dict:
        return {k[len("state_in."):]: self.torch.from_numpy(np.asarray(v, np.float32)) for k, v in state.items()}


# ---- numeric checks -----------------------------------------------------------------------------

def check_numbers(folder: Path, meta: dict, seed: int = 0, stream_chunks: int = 4, reae_slice: int = 0,
                  report=None) -> list[Result]:
    """The numeric checks; reae_slice: latent frames per ReAE call on both sides (0: whole chunks);
    report: called with each Result as it is made (a 1080p check takes many minutes)."""
    tol = TOLERANCES[meta["precision"]]
    chain = export_chain(folder, meta, reae_slice)
    latent_dtype = host_dtype(chain.contract.encoder.tensor(LATENTS).dtype)
    ref = TorchReference(meta, reae_slice)
    rng = np.random.default_rng(seed)
    chunk, results = meta["chunk"], []

    def add(result: Result) -> None:
        results.append(result)
        if report:
            report(result)
    width, height = meta["input_size"]

    def frames(count):
        return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)

    def state_after(which, warmup):
        """A realistic carried state: torch's after one earlier chunk (the same one for both sides)."""
        zero = {s["input"]: np.zeros(s["shape"], np.float32) for s in meta["state"][which]}
        return (ref.encode(warmup, zero) if which == "encoder" else ref.decode(warmup, zero))[1]

    # encoder: the shortest, a regular and the longest chunk, each after a warm-up chunk
    for count in sorted({min(chunk["encoder_frames"]), chunk["clip_len"], max(chunk["encoder_frames"])}):
        state = state_after("encoder", frames(4))
        x = frames(count)
        latents, new = chain.encode(x, state)
        want, want_state = ref.encode(x, state)
        calls = _calls(count, chain.contract.encoder_frames_per_call)
        add(compare_arrays(f"encoder T={count}{calls} latents", "latents", latents, want, tol))
        add(_worst_state(f"encoder T={count}{calls} state", new, want_state, tol))

    # DiT: every latent count, every part boundary
    latent_w, latent_h = meta["latent_size"]
    for count in chunk["dit_latent_frames"]:
        z = rng.standard_normal((1, 48, count, latent_h, latent_w)).astype(np.float32)
        z_graph = z.astype(latent_dtype)
        restored, hidden = chain.dit_boundaries(z_graph)
        parts = chain.contract.chain(count)
        want, want_hidden = ref.dit(z_graph.astype(np.float32), [p.blocks[1] for p in parts[:-1]])
        for name in want_hidden:
            add(compare_arrays(f"dit F={count} {name}", "hidden", hidden[name], want_hidden[name], tol))
        add(compare_arrays(f"dit F={count} restored", "latents", restored, want, tol))

    # decoder: 1 latent and the longest chunk
    for count in (1, max(chunk["decoder_latent_frames"])):
        state = state_after("decoder", rng.standard_normal((1, 48, 1, latent_h, latent_w)).astype(np.float32))
        z = rng.standard_normal((1, 48, count, latent_h, latent_w)).astype(latent_dtype)
        out, new = chain.decode(z, state)
        want, want_state = ref.decode(z.astype(np.float32), state)
        calls = _calls(count, chain.contract.decoder_latents_per_call)
        add(compare_arrays(f"decoder n={count}{calls} frames", "frames", out, want, tol,
                                      f"{np.mean(out != want):.2%} of values differ"))
        add(_worst_state(f"decoder n={count}{calls} state", new, want_state, tol))

    # a stream: FIRST, MIDDLE x (stream_chunks - 2), LAST, with state carried chunk to chunk
    clip_len, overlap = chunk["clip_len"], chunk["dit_overlap"]
    total = clip_len + 4 + (stream_chunks - 2) * clip_len + 5
    video = frames(total)
    got, chunks = run_stream(chain, video, clip_len, overlap)
    want = ref.stream(video, clip_len, overlap)
    kinds = "".join(c.kind[0] for c in chunks)
    add(compare_arrays(f"stream {total} frames ({len(chunks)} chunks: {kinds})", "frames", got, want,
                                  tol, f"{np.mean(got != want):.2%} of values differ"))
    return results


def _calls(count: int, per_call: int) -> str:
    """" (3 calls)" where a ReAE check ran in slices, else nothing."""
    calls = -(-count // per_call)
    return f" ({calls} calls)" if calls > 1 else ""


def _worst_state(name, got: dict, want: dict, tol) -> Result:
    worst = max((compare_arrays(f"{name} {k}", "state", got[k], want[k], tol) for k in want), key=lambda r: r.max_err)
    worst.name = f"{name} (worst: {worst.name.rsplit(' ', 1)[-1]})"
    return worst


# ---- CLI ----------------------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict:
    try:
        return read_export_json(folder)[0]
    except (FileNotFoundError, ContractError) as e:
        raise ExportError(str(e)) from None


def verify_export(folder: str | Path, structure_only: bool = False, seed: int = 0, stream_chunks: int = 4,
                  reae_slice: int = 1) -> bool:
    """Print the report of an export's checks against torch; True when every check holds."""
    folder = Path(folder)
    meta = read_manifest(folder)
    print(f"structure ({meta['precision']}):")
    problems = check_structure(folder, meta)
    if structure_only:
        print("PASS (structure only)" if not problems else f"FAIL: {len(problems)} structure problem(s)")
        return not problems
    print(f"numbers: the ReAE in slices of {reae_slice} latent frame{'s' if reae_slice > 1 else ''} per call (4x as "
          f"many input frames), the state carried" if reae_slice else "numbers: the ReAE on whole chunks (--reae-slice 0)",
          flush=True)
    if meta["precision"] == "bf16":
        print("ONNX Runtime (CPU) has no bf16 kernels: bf16 graphs run with every bf16 tensor widened to float32 "
              "(checks wiring and the bf16-rounded weights/constants, not bf16 arithmetic).")
    print(f"ONNX Runtime vs torch float32 ({meta['precision']} graphs), each line as its check ends:")
    print(f"  {'check':<56}{'max err':>11}{'mean err':>11}{'tolerance':>11}", flush=True)

    def report(r: Result) -> None:
        print(f"  {r.name:<56}{r.max_err:>11.3g}{r.mean_err:>11.3g}{r.tolerance:>11.3g}  "
              f"{'ok' if r.ok else 'FAIL'}{'  ' + r.note if r.note else ''}", flush=True)

    results = check_numbers(folder, meta, seed, stream_chunks, reae_slice, report)
    failed = [r for r in results if not r.ok]
    print("PASS" if not failed and not problems else f"FAIL: {len(problems)} structure problem(s), "
          f"{len(failed)} tolerance(s) exceeded")
    return not failed and not problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="export folder (written by python -m export)")
    parser.add_argument("--structure-only", action="store_true",
                        help="only the structural checks (any size: loads no weights)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--chunks", type=int, default=4, help="chunks in the stream check (>= 3)")
    parser.add_argument("--reae-slice", type=int, default=1, metavar="N",
                        help="latent frames per ReAE call on both sides (default 1: as cpu bundles run it, and what "
                             "keeps a 1080p export's check within a 24 GiB machine; 0: whole chunks)")
    args = parser.parse_args(argv)
    if args.reae_slice < 0:
        parser.error(f"--reae-slice must be 0 (whole chunks) or a number of latent frames, got {args.reae_slice}")
    try:
        return 0 if verify_export(args.folder, args.structure_only, args.seed, max(3, args.chunks),
                                  args.reae_slice) else 1
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
