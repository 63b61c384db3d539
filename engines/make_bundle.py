"""Export folder + GPU profile -> one bundle file (what `python -m engines` runs).

The manifest written into the bundle holds everything a runtime needs besides the engines:

  created, target {gpu, flavour, compute_capabilities, memory_budget_gb, notes}, precision,
  builder {flavour, module, version, settings: optimization level, workspace, strongly typed, ...},
  model (export.json "model": preset, checkpoint, checkpoint_sha256, transformer_config, ...),
  export {format, version, created, export_json_sha256},
  sizes {input_size, output_size, padded_size, latent_size, scale, resolution},
  chunk (export.json "chunk": clip_len, dit_overlap, dit_latent_frames, encoder/decoder frames),
  memory_plan: the GPU total (engines/memory.py) and how it fits the budget (engines/fit.py):
           overlap (false: one context buffer, the runtime's default is then 1 chunk in flight),
           contexts, reae_slice, streamed bytes (each streaming DiT engine's budget is in its
           `memory`: weight_streaming_budget_bytes), budget_gb, card_gb,
  state {encoder: [{input, output, shape, dtype}], decoder: [...]}: state_in.X pairs with state_out.X,
  engines: in chain order [{name, role, member, blocks, latent_frames, inputs, outputs, dynamic
           (these from contract/graphs.py, which reads them back), files, graph_sha256,
           network (layers, layer types, attention counts), build (seconds, peak RSS)}],
           inputs with dynamic dims carry their "min"/"opt"/"max" shapes,
  members {name: {size, sha256}} (added by write_bundle),
  quantization (quantized exports only): {precision, groups, layers, layers_per_graph, decisions,
           videos, quality} from export.json's `quantization` and its calibration record.
"""
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from swiftvr.config import PRECISION_DTYPES

from engines.build import build_engines
from contract.bundle import write_bundle
from engines import host_memory
from engines.cache import DEFAULT_CACHE_DIR
from engines.export_folder import (ExportFolder, count_attention_nodes, graph_files, graph_sha256,
                                   load_graph_proto, read_export, sha256_file, weight_bytes,
                                   with_reae_slice)
from engines.fit import BundleTooLarge  # noqa: F401 - raised here, callers catch it from this module
from engines.fit import built_key, export_engines, fit_bundle, reae_latents, slice_candidates, streamable
from engines.flavours import MODULES
from engines.memory import engine_memory, fit_problem, plan_total
from engines.profiles import (GpuProfile, check_precision, check_quantization, get_profile, memory_budget,
                              quantizations)
from contract.graphs import contract_from_manifest, engine_entry

DEFAULT_OUT_DIR = Path(__file__).resolve().parent


def default_out(export: ExportFolder) -> Path:
    return DEFAULT_OUT_DIR / f"{export.resolution_name}.plan"


def check_export_precision(export: ExportFolder, precision: str | None, profile: GpuProfile) -> str:
    """The bundle's precision: the export's (networks are strongly typed), and one the GPU runs."""
    precision = precision or export.precision
    if precision != export.precision:
        raise ValueError(f"--precision {precision}, but {export.path} was exported in {export.precision}; the "
                         f"engines take their precision from the graphs' dtypes, so re-export with "
                         f"--precision {precision}")
    check_precision(profile, precision)
    want = PRECISION_DTYPES[precision]
    for spec in export.graphs:   # export.json agrees with itself: float I/O in the export precision
        for t in spec.inputs + spec.outputs:
            if t["dtype"].startswith(("float", "bfloat")) and t["dtype"] != want:
                raise ValueError(f"{spec.name}: {t['name']} is {t['dtype']} in an export declared {precision}")
    return precision


def quantization_record(export: ExportFolder, profile: GpuProfile) -> dict | None:
    """What the bundle keeps of a quantized export's calibration (None: not quantized)."""
    q = export.meta.get("quantization")
    if not q:
        return None
    check_quantization(profile, q["precision"])
    record = json.loads((export.path / q["record"]).read_text())
    return {"precision": q["precision"], "groups": q["groups"], "layers": q["layers"],
            "layers_per_graph": {f: len(v) for f, v in record["layers"].items()},
            "decisions": [{k: d[k] for k in ("group", "quantized", "reason")} |
                          {"psnr_db_alone": (d["alone_on_calibration"] or {}).get("psnr_db"),
                           "psnr_db_with_before": (d.get("with_groups_before") or {}).get("psnr_db")}
                          for d in record["groups"]],
            "kept_high_precision": record["kept_high_precision"], "method": record["method"],
            "videos": [{k: v[k] for k in ("path", "sha256", "role", "frames_used")} for v in record["videos"]],
            "quality": record["quality"], "ranges_from": record.get("ranges_from")}


def _engine_entry(spec, member: str, files: list[str], graph_hash: str, network: dict, build: dict | None,
                  memory: dict) -> dict:
    return {**engine_entry(spec.graph, member), "files": files, "graph_sha256": graph_hash,
            "network": network, "build": build, "memory": memory}


def check_fits(memories: list[dict], profile: GpuProfile, when: str) -> dict:
    """The memory plan; raises BundleTooLarge (the numbers and what to change) when it cannot fit."""
    total = plan_total(memories)
    problem = fit_problem(total, profile)
    if problem:
        raise BundleTooLarge(f"{when}: {problem}")
    return total


def _onnx_network_summary(spec) -> dict:
    """What the ONNX graph itself says (cpu bundles have no TensorRT network)."""
    model = load_graph_proto(spec.path)
    top, nested = count_attention_nodes(model)
    return {"onnx_nodes": len(model.graph.node),
            "op_types": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "onnx_attention_nodes": top + nested, "weight_bytes": weight_bytes(model)}


def _built_engines(export: ExportFolder, results) -> list[dict]:
    """The manifest's engine entries of built engines (streamable ones with what they could stream)."""
    engines = []
    for spec, r in zip(export.graphs, results):
        rec = r.record
        network = {**rec["network"], **rec["attention"]}
        build = {k: rec[k] for k in ("parse_seconds", "build_seconds", "peak_rss_bytes", "built_at",
                                     "weight_streaming") if k in rec}
        memory = engine_memory(spec, r.size, rec.get("activation_bytes"))
        if rec.get("weight_streaming"):
            memory.update(streamable(load_graph_proto(spec.path)))
        engines.append(_engine_entry(spec, r.member, [r.member], rec["graph_sha256"], network, build, memory))
    return engines


def build_to_fit(whole: ExportFolder, profile: GpuProfile, plan_fit: dict, reae_slice: int | None, out: Path,
                 cache_dir, force: bool, optimization_level: int) -> tuple[ExportFolder, list, list, dict, dict]:
    """Choose the measures that fit the budget (engines/fit.py), build, then choose again on the built
    engines' real sizes; if that changes what the engines are (the ReAE slice, weight streaming),
    build again (the cache keeps what did not change). Refuses (BundleTooLarge) before building
    when the plan cannot fit. -> (the export as built, its engine entries, EngineResults, build
    settings, the memory plan)."""
    latents, candidates = reae_latents(whole), slice_candidates(whole, reae_slice)
    fit = fit_bundle(export_engines(whole), candidates, latents, where=f"{whole.path} for {profile.name}",
                     can_stream=True, **plan_fit)
    for note in fit.notes:       # what was chosen and why, before the build
        print(f"memory: {note}", file=sys.stderr)
    built: dict = {}
    for _ in range(3):
        export = with_reae_slice(whole, fit.reae_slice) if fit.reae_slice else whole
        results, settings = build_engines(export, profile, cache_dir, force, optimization_level,
                                          plan_fit["budget_gb"], frozenset(fit.streaming))
        engines = _built_engines(export, results)
        built.update({built_key(spec): {"engine_bytes": r.size, "activation_bytes": r.record.get("activation_bytes")}
                      for spec, r in zip(export.graphs, results)})
        again = fit_bundle(export_engines(whole, built), candidates, latents, where=f"{out} for {profile.name}",
                           can_stream=True, **plan_fit)
        if (again.reae_slice, sorted(again.streaming)) == (fit.reae_slice, sorted(fit.streaming)):
            break
        print(f"memory: the built engines' sizes change the plan: {_what(again)} instead of {_what(fit)}; "
              f"building again", file=sys.stderr)
        fit = again
    # The contexts' sharing and the streaming budgets, settled on the engines as built.
    final = fit_bundle(lambda _: engines, [fit.reae_slice], latents, where=f"{out} for {profile.name}",
                       can_stream=bool(fit.streaming), **plan_fit)
    if (final.overlap, final.streaming.keys()) != (fit.overlap, fit.streaming.keys()):   # the real sizes moved it
        for note in final.notes:
            print(f"memory: on the engines as built: {note}", file=sys.stderr)
    return export, final.engines, results, settings, {**final.plan, "reae_slice": fit.reae_slice}


def _what(fit) -> str:
    return (f"ReAE slices of {fit.reae_slice}" if fit.reae_slice else "whole ReAE chunks") + \
        (", DiT weight streaming" if fit.streaming else "")


# A cpu bundle runs the ReAE one latent frame (4 input frames) per call unless told otherwise: at
# 704x576 that needs 2.3 GiB of host memory instead of 12.6 GiB for whole chunks, and runs no slower
# (docs/benchmarks.md "Host memory"): ONNX Runtime's convolutions gain nothing from the longer batch.
CPU_REAE_SLICE = 1


def make_bundle(export_dir, gpu: str, precision: str | None = None, out=None, cache_dir=DEFAULT_CACHE_DIR,
                force: bool = False, optimization_level: int = 3, reae_slice: int | None = None,
                vram_gb: float | None = None) -> tuple[Path, dict, list]:
    """Build (or take from the cache) every engine of the export for `gpu`; write the bundle.
    reae_slice: latent frames per ReAE call (0: a whole chunk per call; None: CPU_REAE_SLICE for cpu
    bundles); see with_reae_slice. For GPU profiles engines/fit.py chooses it when not given, with the context sharing and weight
    streaming, to fit the budget: the profile's, or vram_gb (GB of GPU memory) less its reserve.

    Returns (bundle path, manifest as written, EngineResult list; empty for cpu).
    """
    profile = get_profile(gpu)
    budget_gb = memory_budget(profile, vram_gb)
    whole = export = read_export(export_dir)
    if profile.flavour == "onnx" and reae_slice is None:
        reae_slice = CPU_REAE_SLICE
    if reae_slice:      # 0: whole chunks, chosen by the user
        export = with_reae_slice(export, reae_slice)
    precision = check_export_precision(export, precision, profile)
    quantization = quantization_record(export, profile)
    out = Path(out) if out else default_out(export)

    engines, members, results, host = [], [], [], None
    if profile.flavour == "onnx":
        builder = {"flavour": "onnx", "module": "onnxruntime", "version": None,
                   "settings": {"note": "no engines: the ONNX graphs themselves, for ONNX Runtime"}}
        for spec in export.graphs:
            files = graph_files(spec)
            for f in files:   # graphs may share an external data file: bundle it once
                if f.name not in dict(members):
                    members.append((f.name, f))
            summary = _onnx_network_summary(spec)
            engines.append(_engine_entry(spec, spec.path.name, [f.name for f in files], graph_sha256(spec),
                                         summary, None, engine_memory(spec, summary["weight_bytes"], None)))
        memory_plan = check_fits([e["memory"] for e in engines], profile, f"{out} for {gpu}")
        # The bundle runs on this machine: measure what it needs (engines/host_memory.py).
        print(f"measuring host memory: the largest chunk ({export.meta['chunk']['clip_len'] + 4} frames) through "
              f"the graphs in a child process", file=sys.stderr)
        host = host_memory.plan_or_reason(export.path, reae_slice, memory_plan, export.meta["chunk"]["clip_len"])
    else:
        plan_fit = dict(profile=profile, budget_gb=budget_gb, card_gb=vram_gb or profile.memory_gb,
                        fp8_advice="fp8" in quantizations(profile) and not quantization and precision != "fp32")
        export, engines, results, settings, memory_plan = build_to_fit(whole, profile, plan_fit, reae_slice, out,
                                                                       cache_dir, force, optimization_level)
        builder = {"flavour": profile.flavour, "module": MODULES[profile.flavour],
                   "version": settings["tensorrt_version"], "settings": settings}
        members = [(r.member, r.path, r.sha256) for r in results]
    meta = export.meta
    manifest = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": {"gpu": profile.name, "flavour": profile.flavour,
                   "compute_capabilities": list(profile.compute_capabilities),
                   "memory_budget_gb": profile.memory_budget_gb, "notes": profile.notes},
        "precision": precision,
        "builder": builder,
        "model": meta.get("model"),
        "export": {"format": meta["format"], "version": meta["version"], "created": meta.get("created"),
                   "export_json_sha256": sha256_file(export.path / "export.json")},
        "sizes": {k: meta.get(k) for k in ("input_size", "output_size", "padded_size", "latent_size", "scale")}
                 | {"resolution": export.resolution_name},
        "chunk": meta.get("chunk"),
        "state": export.contract.to_json()[1],     # the state pairs, as contract/graphs.py read them
        "engines": engines,
        "memory_plan": memory_plan,
    }
    if host:
        manifest["host_memory"] = host
    if quantization:
        manifest["quantization"] = quantization
    contract_from_manifest(manifest, str(out))   # the runtime can build its plan from what is written
    manifest = write_bundle(out, manifest, members)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 2**20:.1f} MiB): {profile.name}, {precision}"
          f"{' + ' + quantization['precision'] + ' Q/DQ' if quantization else ''}, "
          f"{', '.join(m[0] for m in members)}", file=sys.stderr)
    return out, manifest, results
