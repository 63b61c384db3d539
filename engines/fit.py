"""Fitting a bundle to a GPU's memory budget: what make_bundle does before building, not guesswork.

The budget is the profile's (engines/profiles.py), or `--vram GB` less the profile's reserve. The
plan is engines/memory.py's gpu_plan over the export's graphs (engine size = the graphs' weights,
activations = the ONNX estimate until TensorRT reports them). Measures, tried cheapest first, and
taken only where the plan does not fit without them:

  1. the ReAE in slices (engines --reae-slice): the largest slice that fits, so the fewest calls;
     the encoder and decoder activations shrink with the frames per call;
  2. overlap off: one context buffer for every engine (contract/context_memory.py); the stages then
     run one after another on one stream, one chunk in flight (the manifest says so and the
     runtime's default follows), losing the overlap of encode, DiT and decode;
  3. weight streaming of the DiT engines (TensorRT's BuilderFlag.WEIGHT_STREAMING, the budget set
     with engine.weight_streaming_budget_v2 when the bundle loads): only as many DiT weight bytes
     stay on the GPU as the budget leaves; the rest is held in host memory and crosses PCIe at
     every DiT call (the plan states that cost: bytes over the link's rate, an estimate).

The DiT parts always share one buffer: they run one after another on the DiT lane. A plan that
cannot fit with every measure is refused before anything is built, with the numbers and only the
changes that would make it fit (an FP8 DiT where the GPU runs one and it would fit, a smaller size,
a GPU with enough memory).
"""
from dataclasses import dataclass, field
from typing import Callable

from contract.graphs import FRAMES, dim_max
from engines.export_folder import ExportFolder, largest_weight_bytes, load_graph_proto, weight_bytes, with_reae_slice
from engines.memory import GIB, budget_text, fit_problem, gpu_plan, graph_memory, size_text

# Weight streaming keeps the weights of the layer running and of the next one arriving on the GPU:
# its scratch is estimated as two of the engine's largest weight tensors (TensorRT reports the real
# figure, engine.weight_streaming_scratch_memory_size, only on a GPU; no check reads it yet).
SCRATCH_TENSORS = 2
# An FP8 DiT (python -m calibration) holds its quantized GEMM weights in 1 byte instead of 2.
FP8_DIT_WEIGHT_FACTOR = 0.5


class BundleTooLarge(ValueError):
    """The planned GPU memory of a bundle exceeds its budget, whatever measure is taken."""


@dataclass
class Fit:
    reae_slice: int | None       # latent frames per ReAE call; None: whole chunks
    overlap: bool                # stages on their own streams (a context buffer per lane)
    engines: list[dict]          # engine entries as planned (DiT memory with its streaming budget)
    plan: dict                   # memory.gpu_plan of them, with the budget
    notes: list[str] = field(default_factory=list)   # what was chosen and why, and precision advice

    @property
    def streaming(self) -> dict[str, int]:
        """DiT engine -> weight bytes it keeps on the GPU (engine.weight_streaming_budget_v2)."""
        return {e["name"]: e["memory"]["weight_streaming_budget_bytes"] for e in self.engines
                if e["memory"].get("weight_streaming_budget_bytes") is not None}


def reae_latents(export: ExportFolder) -> int:
    """Latent frames of the longest chunk the encoder takes (clip_len + 4 frames: the first chunk)."""
    return dim_max(export.contract.encoder, FRAMES, 0) // 4


def slice_candidates(export: ExportFolder, fixed: int | None) -> list[int | None]:
    """Whole chunks first, then ever smaller slices; only `fixed` when the user chose one (0: whole)."""
    if fixed is not None:
        return [fixed or None]      # 0: whole chunks
    return [None, *range(reae_latents(export) - 1, 0, -1)]


def built_key(spec) -> tuple:
    """What an engine's memory depends on besides the build settings: its graph and profile."""
    return spec.name, repr(spec.dynamic)


def export_engines(export: ExportFolder, built: dict | None = None) -> Callable[[int | None], list[dict]]:
    """slice -> the export's engines as the plan sees them. Before building, an engine's size is its
    graph's weights; `built` ({built_key: {"engine_bytes", "activation_bytes"}}) gives the real size
    (an engine of another profile of the same graph: its size) and TensorRT's activation figure
    where a build read it. DiT engines carry what they could stream. Each graph is read once, each
    sliced ReAE walked once."""
    protos = {spec.name: load_graph_proto(spec.path) for spec in export.graphs}
    built = built or {}
    sizes = {name: m["engine_bytes"] for (name, _), m in built.items()}
    memos: dict[tuple, dict] = {}

    def memory(spec) -> dict:
        key = built_key(spec)
        if key not in memos:
            proto = protos[spec.name]
            real = built.get(key, {})
            memos[key] = {**graph_memory(spec), "engine_bytes": sizes.get(spec.name, weight_bytes(proto)),
                          "activation_bytes": real.get("activation_bytes"),
                          **(streamable(proto) if spec.role == "dit" else {})}
        return memos[key]

    def engines(reae_slice: int | None) -> list[dict]:
        sliced = with_reae_slice(export, reae_slice) if reae_slice else export
        return [{"name": s.name, "role": s.role, "latent_frames": s.graph.latent_frames, "memory": memory(s)}
                for s in sliced.graphs]
    return engines


def streamable(proto) -> dict:
    """A DiT graph's weights (what weight streaming could leave in host memory) and the scratch estimate."""
    return {"streamable_bytes": weight_bytes(proto), "streaming_scratch_bytes": SCRATCH_TENSORS * largest_weight_bytes(proto)}


def _with_streaming(engines: list[dict], resident: int) -> list[dict]:
    """The engines with `resident` DiT weight bytes kept on the GPU, shared in proportion to each
    part's weights (0: every streamable byte streamed)."""
    dit = {e["name"]: e["memory"]["streamable_bytes"] for e in engines if e["memory"].get("streamable_bytes")}
    weights = sum(dit.values())
    out = []
    for e in engines:
        if e["name"] in dit:
            share = min(e["memory"]["streamable_bytes"], resident * e["memory"]["streamable_bytes"] // weights)
            e = {**e, "memory": {**e["memory"], "weight_streaming_budget_bytes": share}}
        out.append(e)
    return out


def _search(engines_for, slices, budget: int, can_stream: bool) -> tuple[Fit | None, Fit]:
    """(the cheapest fitting choice or None, the smallest plan tried: what every measure gives)."""
    smallest = None
    for overlap in (True, False):
        for n in slices:
            engines = engines_for(n)
            plan = gpu_plan(engines, overlap)
            if plan["total_bytes"] <= budget:
                return Fit(n, overlap, engines, plan), Fit(n, overlap, engines, plan)
            if smallest is None or plan["total_bytes"] < smallest.plan["total_bytes"]:
                smallest = Fit(n, overlap, engines, plan)
    if not can_stream or not any(e["memory"].get("streamable_bytes") for e in smallest.engines):
        return None, smallest
    # Everything streamed, on the layout that needs the least besides the weights (overlap off, and the
    # largest slice reaching that least: the fewest calls).
    floors = [Fit(n, False, s, gpu_plan(s, False)) for n in slices for s in [_with_streaming(engines_for(n), 0)]]
    floor = min(floors, key=lambda f: f.plan["total_bytes"])
    spare = budget - floor.plan["total_bytes"]
    if spare < 0:
        return None, floor
    engines = _with_streaming(floor.engines, spare)
    return Fit(floor.reae_slice, False, engines, gpu_plan(engines, False)), floor


def _measures(fit: Fit, latents: int, short: bool = False) -> str:
    if short:
        return ", ".join([*([f"ReAE slices of {fit.reae_slice}"] if fit.reae_slice else []),
                          *(["overlap off"] if not fit.overlap else []),
                          *([f"{size_text(sum(fit.plan['streamed_bytes'].values()))} of DiT weights streamed"]
                            if fit.streaming else [])]) or "no measure"
    taken = []
    if fit.reae_slice:
        calls = -(-latents // fit.reae_slice)
        taken.append(f"the ReAE in slices of {fit.reae_slice} latent frame{'s' if fit.reae_slice > 1 else ''} "
                     f"({calls} encoder and {calls} decoder calls per {latents}-latent chunk)")
    if not fit.overlap:
        taken.append("overlap off (one context buffer for every engine; the stages run one after another, "
                     "1 chunk in flight)")
    if fit.streaming:
        streamed = fit.plan["streamed_bytes"]
        taken.append(f"{size_text(sum(streamed.values()))} of DiT weights streamed from host memory at every DiT "
                     f"call ({', '.join(f'{k} keeps {size_text(v)}' for k, v in fit.streaming.items())})")
    return "; ".join(taken) or "no measure needed"


def _fp8(engines_for) -> Callable[[int | None], list[dict]]:
    """The same engines with an FP8 DiT: its weights (engine size and what it could stream) halved."""
    def engines(n):
        out = []
        for e in engines_for(n):
            if e["role"] == "dit":
                m = e["memory"]
                m = {**m, "engine_bytes": int(m["engine_bytes"] * FP8_DIT_WEIGHT_FACTOR),
                     **({"streamable_bytes": int(m["streamable_bytes"] * FP8_DIT_WEIGHT_FACTOR)}
                        if m.get("streamable_bytes") else {})}
                e = {**e, "memory": m}
            out.append(e)
        return out
    return engines


def fit_bundle(engines_for: Callable[[int | None], list[dict]], slices: list[int | None], latents: int,
               profile, budget_gb: float, card_gb: float | None, where: str, can_stream: bool,
               fp8_advice: bool) -> Fit:
    """The cheapest measures under which the plan fits `budget_gb`; BundleTooLarge when none do.
    engines_for(slice): the engines as planned for a ReAE slice (None: whole chunks); latents: a
    chunk's ReAE latent frames; fp8_advice: whether an FP8 DiT is an option (GPU and export)."""
    budget = int(budget_gb * GIB)
    who = {"budget_gb": budget_gb, "card_gb": card_gb}
    fit, smallest = _search(engines_for, slices, budget, can_stream)
    fp8 = _search(_fp8(engines_for), slices, budget, can_stream)[0] if fp8_advice else None
    if fit is not None:
        fit.plan.update(who)
        as_is = gpu_plan(engines_for(slices[0]), True)
        if fit.reae_slice != slices[0] or not fit.overlap or fit.streaming:
            fit.notes.append(f"{where}: {size_text(as_is['total_bytes'])} as it stands, budget {budget_text(budget_gb)}; "
                             f"fits at {size_text(fit.plan['total_bytes'])} with {_measures(fit, latents)}")
        if fit.streaming and fp8 is not None and not fp8.streaming:
            fit.notes.append(f"an FP8 DiT (--precision fp8 --calib CLIP) would fit without weight streaming: "
                             f"{size_text(fp8.plan['total_bytes'])} with {_measures(fp8, latents, short=True)} "
                             f"(estimate: the DiT's weights at 1 byte instead of 2)")
        return fit
    smallest.plan.update(who)
    problem = fit_problem(smallest.plan, profile, budget_gb)
    advice = []
    if fp8 is not None:
        advice.append(f"an FP8 DiT (--precision fp8 --calib CLIP): about {size_text(fp8.plan['total_bytes'])} with "
                      f"{_measures(fp8, latents, short=True)} (estimate: the DiT's weights at 1 byte instead of 2)")
    if smallest.plan["engines_bytes"] < budget:   # else no size could fit: the engines alone exceed the budget
        rest = smallest.plan["activation_bytes"] + smallest.plan["io_bytes"]
        advice.append(f"a smaller --res or --clip-len (activations and I/O, {size_text(rest)} of it, grow with the "
                      f"output's pixels and the frames per chunk)")
    reserve = profile.memory_gb - profile.memory_budget_gb if profile.memory_gb else 0
    advice.append(f"a GPU with at least {-(-(smallest.plan['total_bytes'] / GIB + reserve) // 1):.0f} GB")
    raise BundleTooLarge(f"{where}: even with {_measures(smallest, latents)}, {problem}. What would change that: "
                         + "; or ".join(advice))
