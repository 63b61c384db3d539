"""Export folder + calibration clips -> a quantized export folder and its calibration record.

  1. Stream the calibration clips through the export's graphs (chunk protocol, carried state) and
     record every graph's input feeds per call.
  2. Per graph, measure activation ranges once (onnxruntime.quantization, cached).
  3. Per candidate layer group (calibration/layers.py), quantize that group alone and measure the
     restored frames of the first calibration clip (its first FIRST+MIDDLE+LAST chunks) against the
     unquantized graphs' (PSNR); the groups that stay at or above `min_psnr` dB are then added one
     by one (best first), each kept only if the set still stays at or above `min_psnr`. With
     `groups` given, those are quantized and the others left out, with no trial: a trial is one
     quantization of every graph holding the group plus one stream, 11 minutes per group for the 5B
     DiT at 256x144 on 2 cores (docs/benchmarks.md); step 4 still measures what was chosen. The
     decisions and the numbers go into the record.
  4. Quantize every graph with the kept groups; report PSNR/SSIM/largest level difference on the
     held-out clips, end to end and with one stage quantized at a time.
  5. Write the folder: graphs, export.json (the export's, plus a `quantization` field, through
     contract/graphs.py) and calibration.json, into a temporary folder renamed into place at the end,
     so a failed or interrupted run leaves nothing half-written.
"""
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import onnx

from contract.graphs import (ContractError, check_quantization, contract_from_json, read_export_json,
                             write_export_json)

from .layers import CANDIDATES, STAGE_OF, chosen_nodes, glue_nodes, node_groups
from .quality import FIDELITY_NOTE, combine, compare_frames
from .ranges import write_ranges
from .quantize import (activation_ranges, narrow_to_bf16, needs_external_data, quantize_graph, quantized_nodes,
                       scheme_record, working_model)
from .stream import REAE_SLICE, record_feeds, restore, stream_chain
from contract.files import sha256_file

from .video import CalibrationError, check_length, read_clip

PRECISIONS = ("int8", "fp8")
# The groups whose sensitivity is measured by default. FP8 tries the DiT's linears only: FP8 runs
# on GPUs, where the DiT is the cost, and measuring FP8 ReAE convolutions here means ONNX
# Runtime's histogram calibration and emulated FP8 convolutions (dequantize + float32), which took
# over 10 minutes for the tiny decoder at 96x64 on 2 cores (encoder.conv alone: 37.8 dB, under 40).
# --groups tries any group.
TRIED = {"int8": CANDIDATES, "fp8": ("dit.self_attn", "dit.cross_attn", "dit.ffn")}
TRIED_NOTE = {"int8": "", "fp8": "not tried for fp8 by default (ReAE convolutions: --groups; docs/benchmarks.md)"}
RECORD = "calibration.json"
RANGES = "ranges"      # the measured ranges, one file per quantized graph (calibration/ranges.py)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _graph_files(folder: Path, entry_file: str) -> list[Path]:
    """The .onnx file and the external data files it names."""
    model = onnx.load(str(folder / entry_file), load_external_data=False)
    data = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return [folder / entry_file] + [folder / d for d in sorted(data)]


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def calibrate(export_dir, videos: list, precision: str, out, holdout: list | None = None,
              max_frames: int | None = None, min_psnr: float = 40.0, groups: list[str] | None = None,
              overwrite: bool = False) -> dict:
    """Returns the calibration record (also written to OUT/calibration.json)."""
    t0 = time.perf_counter()
    export_dir, out = Path(export_dir), Path(out)
    if precision not in PRECISIONS:
        raise CalibrationError(f"precision {precision!r}: calibration makes {' or '.join(PRECISIONS)}")
    try:
        meta, contract = read_export_json(export_dir)
    except (FileNotFoundError, ContractError) as e:
        raise CalibrationError(str(e)) from None
    if meta.get("quantization"):
        raise CalibrationError(f"{export_dir} is already quantized ({meta['quantization']['precision']}); "
                               f"calibrate its unquantized export")
    if meta["precision"] not in ("fp32", "bf16"):
        raise CalibrationError(f"{export_dir} is {meta['precision']}: ONNX Runtime's quantizer takes float32 graphs "
                               f"(bf16 ones are widened for it); export with --precision fp32 or bf16")
    if out.exists() and not overwrite:
        raise CalibrationError(f"{out} exists (pass --overwrite to replace it)")
    if out.resolve() == export_dir.resolve():
        raise CalibrationError("--out must be a new folder, not the export itself")
    unknown = sorted(set(groups or []) - set(CANDIDATES))
    if unknown:
        raise CalibrationError(f"unknown layer groups {unknown}; the groups are {', '.join(CANDIDATES)}")

    clip_len = meta["chunk"]["clip_len"]
    size = tuple(meta["input_size"])
    calib = [read_clip(v, size, max_frames) for v in videos]
    for c in calib:
        check_length(c, clip_len)
    held = [read_clip(v, size, max_frames) for v in holdout or []]
    if not held:   # no held-out clip given: the last calibration clip's second half is held out
        if len(calib) > 1:
            held = [calib.pop()]
        else:
            c = calib[0]
            half = len(c.frames) // 2
            if half < 2 * clip_len + 5:
                raise CalibrationError(f"{c.path} ({len(c.frames)} frames) is too short to split into a calibration "
                                       f"half and a held-out half of {2 * clip_len + 5}+ frames each; give a longer "
                                       f"clip or --holdout CLIP")
            from .video import Clip
            held = [Clip(c.path, c.sha256, c.frames[half:], c.source_size,
                         c.notes + [f"frames {half}..{len(c.frames) - 1} held out for the quality report"])]
            c.frames = c.frames[:half]
            c.notes = c.notes + [f"frames 0..{half - 1} used for calibration"]
    for c in calib + held:
        for note in c.notes:
            log(f"note: {c.path}: {note}")

    return write_folder(out, lambda tmp: _calibrate_into(tmp, export_dir, meta, contract, calib, held, precision,
                                                         min_psnr, groups), t0)


def write_folder(out: Path, fill, t0: float) -> dict:
    """fill(tmp) writes a quantized export into a temporary folder beside `out` (its scratch space
    in tmp/.work) and returns the record; the folder is renamed into place only when complete, so
    a failed or interrupted run leaves nothing half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):    # left by a run that was killed (SIGKILL)
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / ".work").mkdir(parents=True)
    try:
        record = fill(tmp)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        shutil.rmtree(tmp / ".work")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _calibrate_into(tmp: Path, export_dir: Path, meta: dict, contract, calib, held, precision: str,
                    min_psnr: float, forced_groups) -> dict:
    work = tmp / ".work"
    entries = {g.file: g for g in contract.graphs()}
    float_files = {f: working_model(export_dir / f, work, meta["precision"]) for f in entries}
    fp8 = precision == "fp8"

    log(f"calibration: streaming {sum(len(c.frames) for c in calib)} frames of {len(calib)} clip(s) through "
        f"{export_dir} ...")
    feeds, _, kinds = record_feeds(export_dir, meta, [c.frames for c in calib], float_files, spill_to=work / "feeds")
    silent = [f for f, calls in feeds.items() if not calls]
    if silent:
        raise CalibrationError(f"the calibration clips never call {silent}: give longer clips")
    models = {f: onnx.load(str(p), load_external_data=False) for f, p in float_files.items()}
    groups = {f: node_groups(models[f], entries[f].role) for f in entries}
    glue = {f: glue_nodes(models[f], entries[f].role) for f in entries}

    def quantize_set(chosen: set, folder: Path) -> dict:
        """Quantize every graph holding nodes of the `chosen` groups; {file: path} of those."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {}
        for f in entries:
            nodes = chosen_nodes(chosen, groups[f], glue[f])
            if nodes:
                quantize_graph(float_files[f], folder / f, feeds[f], precision, nodes, work / f"{f}.ranges.json")
                files[f] = folder / f
        return files

    def stream_psnr(files: dict, clips, refs) -> dict:
        chain = stream_chain(export_dir, meta, {**float_files, **files}, basic_optimizations=fp8)
        return combine([compare_frames(restore(chain, meta, c.frames), r) for c, r in zip(clips, refs)])

    # Sensitivity trials stream one short clip: the first FIRST+MIDDLE+LAST frames of the first
    # calibration clip (every graph called, state carried); one stream per group keeps this cheap
    # where ONNX Runtime only emulates the precision (FP8: dequantize + float op).
    trial_frames = min(len(calib[0].frames), 2 * meta["chunk"]["clip_len"] + 5)
    trial = [replace(calib[0], frames=calib[0].frames[:trial_frames])]
    trial_ref = None if forced_groups else [restore(stream_chain(export_dir, meta, float_files), meta,
                                                         trial[0].frames)]
    decisions = []
    present = [g for g in CANDIDATES if any(g in groups[f] for f in entries)]
    for g in present:
        if forced_groups and g not in forced_groups:      # not measured: --groups already decided
            decisions.append({"group": g, "stage": STAGE_OF[g], "layers": sum(len(groups[f].get(g, [])) for f in entries),
                              "alone_on_calibration": None, "quantized": False, "reason": "left out by --groups"})
            log(f"  {g:<15} left out by --groups")
            continue
        if not forced_groups and g not in TRIED[precision]:
            decisions.append({"group": g, "stage": STAGE_OF[g], "layers": sum(len(groups[f].get(g, [])) for f in entries),
                              "alone_on_calibration": None, "quantized": False, "reason": TRIED_NOTE[precision]})
            log(f"  {g:<15} not tried: {TRIED_NOTE[precision]}")
            continue
        if forced_groups:      # chosen, not tried: the held-out report below measures the set
            decisions.append({"group": g, "stage": STAGE_OF[g], "layers": sum(len(groups[f].get(g, [])) for f in entries),
                              "alone_on_calibration": None, "quantized": True, "reason": "chosen by --groups"})
            log(f"  {g:<15} chosen by --groups")
            continue
        t = time.perf_counter()
        result = stream_psnr(quantize_set({g}, work / g), trial, trial_ref)
        shutil.rmtree(work / g)      # a trial's graphs: 14 GB for the 5B DiT's three parts
        keep = result["psnr_db"] is None or result["psnr_db"] >= min_psnr
        decisions.append({"group": g, "stage": STAGE_OF[g], "layers": sum(len(groups[f].get(g, [])) for f in entries),
                          "alone_on_calibration": result, "quantized": keep,
                          "reason": f"PSNR alone {'>=' if keep else '<'} {min_psnr} dB"})
        log(f"  {g:<15} alone: PSNR {result['psnr_db']} dB, SSIM {result['ssim']}  -> "
            f"{'quantize' if keep else 'keep high precision'} ({time.perf_counter() - t:.1f} s)")
    # Groups that pass alone can still add up to less than min_psnr together: add them in order of
    # their PSNR alone, each kept only if the set so far still holds min_psnr on the same frames.
    if not forced_groups:
        passing = sorted((d for d in decisions if d["quantized"]), key=lambda d: -(d["alone_on_calibration"]["psnr_db"]
                                                                                   or float("inf")))
        chosen_so_far = set()
        for d in passing:
            if not chosen_so_far:
                together = d["alone_on_calibration"]
            else:
                t = time.perf_counter()
                together = stream_psnr(quantize_set(chosen_so_far | {d["group"]}, work / f"with-{d['group']}"),
                                       trial, trial_ref)
                shutil.rmtree(work / f"with-{d['group']}")
                log(f"  + {d['group']:<13} with {', '.join(sorted(chosen_so_far))}: PSNR {together['psnr_db']} dB "
                    f"({time.perf_counter() - t:.1f} s)")
            d["with_groups_before"] = together
            if together["psnr_db"] is None or together["psnr_db"] >= min_psnr:
                chosen_so_far.add(d["group"])
            else:
                d["quantized"] = False
                d["reason"] = (f"PSNR alone >= {min_psnr} dB, but with {', '.join(sorted(chosen_so_far))} "
                               f"{together['psnr_db']} dB < {min_psnr} dB")
    chosen = {d["group"] for d in decisions if d["quantized"]}
    if not chosen:
        alone = ", ".join(f"{d['group']} {d['alone_on_calibration']['psnr_db']} dB" for d in decisions
                          if d["alone_on_calibration"])
        raise CalibrationError(f"no layer group stays at or above {min_psnr} dB when quantized alone "
                               f"({alone}); "
                               f"lower --min-psnr or pick --groups")
    final = quantize_set(chosen, work / "final")

    runs = held_out_quality(export_dir, meta, entries, float_files, final, held, precision)
    layers, ranges = place_graphs(tmp, export_dir, meta, entries, final)
    range_caches = {}
    for f in final:      # the measured ranges, per node (calibration/ranges.py): what calibration.apply reuses
        (tmp / RANGES).mkdir(exist_ok=True)
        write_ranges(work / f"{f}.ranges.json", models[f], entries[f].role, tmp / RANGES / f"{f}.json")
        range_caches[f] = f"{RANGES}/{f}.json"

    import onnxruntime
    record = {
        "format": "swiftvr-calibration", "version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": precision,
        "source_export": {"path": str(export_dir), "precision": meta["precision"],
                          "export_json_sha256": sha256_file(export_dir / "export.json")},
        "method": {"library": f"onnxruntime.quantization {onnxruntime.__version__}", "format": "QDQ",
                   **scheme_record(precision), "min_psnr_db": min_psnr,
                   "sensitivity_frames": None if forced_groups else trial_frames,
                   "data": "real frames through the chunk protocol (run_chunk), ReAE state carried",
                   "reae_slice": REAE_SLICE},
        "videos": [c.record("calibration", len(c.frames)) for c in calib] +
                  [c.record("held-out", len(c.frames)) for c in held],
        "chunks": kinds,
        "calls": {f: len(v) for f, v in feeds.items()},
        "groups": decisions,
        "kept_high_precision": sorted({g for f in entries for g in groups[f]} - set(CANDIDATES)),
        "layers": layers,
        "ranges": ranges,
        "range_caches": range_caches,
        "quality": {"note": FIDELITY_NOTE, "runs": runs,
                    **({"ort_optimization": "basic (FP8 Q/DQ)"} if fp8 else {})},
    }
    write_quantized_export_json(tmp, meta, record, sorted(chosen))
    return record


def held_out_quality(export_dir: Path, meta: dict, entries: dict, float_files: dict, final: dict, held,
                     precision: str) -> dict:
    """PSNR/SSIM/largest level difference of the quantized graphs `final` against the float ones on
    the held-out clips: end to end, and with one stage quantized at a time."""
    fp8 = precision == "fp8"      # FP8 Q/DQ graphs run at ORT's basic level (calibration/stream.py)

    def stream_psnr(files: dict, refs) -> dict:
        chain = stream_chain(export_dir, meta, {**float_files, **files}, basic_optimizations=fp8)
        return combine([compare_frames(restore(chain, meta, c.frames), r) for c, r in zip(held, refs)])

    log(f"quality on {len(held)} held-out clip(s) ...")
    refs = [restore(stream_chain(export_dir, meta, float_files), meta, c.frames) for c in held]
    runs = {"end_to_end": stream_psnr(final, refs)}
    for stage in ("encoder", "dit", "decoder"):
        files = {f: p for f, p in final.items() if entries[f].role == stage}
        if files:
            runs[f"{stage}_only"] = stream_psnr(files, refs)
    return runs


def place_graphs(tmp: Path, export_dir: Path, meta: dict, entries: dict, final: dict) -> tuple[dict, dict]:
    """Put every graph into the new folder: the quantized ones (narrowed back to bf16 for a bf16
    export), the others copied. Returns ({file: quantized layers}, {file: activation ranges})."""
    layers, ranges = {}, {}
    for f in entries:
        if f in final:
            model = onnx.load(str(final[f]), load_external_data=False)
            layers[f] = quantized_nodes(model)
            ranges[f] = activation_ranges(model)
            if meta["precision"] == "bf16":
                # The export's graph without its weights: narrowing reads only names, dtypes and dims, and
                # shape inference refuses a ModelProto over protobuf's 2 GB (a 5B DiT part is 2.8 GB).
                full = narrow_to_bf16(onnx.load(str(final[f])), onnx.load(str(export_dir / f), load_external_data=False))
                onnx.save(full, str(tmp / f), save_as_external_data=needs_external_data(full),
                          location=f + ".data")
            else:
                for src in _graph_files(final[f].parent, f):
                    shutil.move(str(src), tmp / src.name)
        else:
            for src in _graph_files(export_dir, f):
                if not (tmp / src.name).exists():
                    shutil.copy2(src, tmp / src.name)
    return layers, ranges


def write_quantized_export_json(tmp: Path, meta: dict, record: dict, groups: list[str]) -> None:
    """The new folder's export.json: the source export's, plus what was quantized (through the one
    contract module, checked on the way)."""
    quantization = {"precision": record["precision"], "record": RECORD, "groups": groups,
                    "layers": sum(len(v) for v in record["layers"].values()), "quality": record["quality"]}
    new_meta = {**meta, "quantization": quantization}
    check_quantization(new_meta, "export.json")
    contract_from_json(new_meta, "export.json")
    write_export_json(tmp, new_meta)
    e2e = record["quality"]["runs"]["end_to_end"]
    log(f"quantized {quantization['layers']} layers ({', '.join(groups)}); end to end on held-out clips: "
        f"PSNR {e2e['psnr_db']} dB, SSIM {e2e['ssim']}, max level diff {e2e['max_level_diff']}")
