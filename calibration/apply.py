"""A calibration made on one export, applied to another export of the same model: calibrate at a
small size, ship at 1080p.

Why: calibration runs every graph in ONNX Runtime on the CPU in float32, once per chunk and once
more per layer-group trial. At 1080p the 5B DiT is ~1.4e14 FLOP per call; at 360p a sixteenth of
that. The ranges it measures are per tensor, and the two exports run the same modules in the same order:
the quantizable nodes come out of the torch exporter in the same sequence, each with the module
path it was called from, so the kept ranges (per node, calibration/ranges.py) are paired by
position, checked against op type and module path, and handed to ONNX Runtime under this export's
tensor names. The result: the same layers, the same activation scales. What differs is
what the ranges were measured on (fewer tokens and pixels per frame), so the quality report either
comes from held-out clips run at the new size (--holdout) or is carried over and says where it was
measured.

    python -m calibration --export exports/1080p --ranges-from exports/360p-fp8 --out exports/1080p-fp8

Checked before anything is written: the same weights and DiT configuration, the same graphs
(roles, DiT parts and blocks), the same sequence of quantizable nodes in every graph, and after
quantizing, the quantized layers are the calibrated ones, node for node.
"""
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import onnx

from contract.graphs import ContractError, read_export_json

from .calibrate import (RANGES, RECORD, held_out_quality, log, place_graphs, write_folder,
                        write_quantized_export_json)
from .layers import chosen_nodes, glue_nodes, node_groups
from .quantize import quantize_graph, quantized_nodes, working_model
from .ranges import ort_cache_for, read_ranges, write_ranges
from contract.files import sha256_file

from .video import CalibrationError, read_clip


def _same_model(a: dict, b: dict) -> bool:
    """The weights and shapes: the checkpoint's path may differ, its content hash may not."""
    return {k: v for k, v in a.items() if k != "checkpoint"} == {k: v for k, v in b.items() if k != "checkpoint"}


def _graph_layout(contract) -> list:
    return [(g.file, g.role, tuple(g.blocks) if g.blocks else None) for g in contract.graphs()]


def apply_calibration(calibrated_dir, export_dir, out, holdout: list | None = None, max_frames: int | None = None,
                      overwrite: bool = False) -> dict:
    """Quantize `export_dir` with the layers and ranges of the quantized export `calibrated_dir`;
    write OUT (graphs, export.json, calibration.json). Returns the new calibration record."""
    t0 = time.perf_counter()
    calibrated_dir, export_dir, out = Path(calibrated_dir), Path(export_dir), Path(out)
    try:
        source_meta, source_contract = read_export_json(calibrated_dir)
        meta, contract = read_export_json(export_dir)
    except (FileNotFoundError, ContractError) as e:
        raise CalibrationError(str(e)) from None
    q = source_meta.get("quantization")
    if not q:
        raise CalibrationError(f"{calibrated_dir} is not quantized: --ranges-from takes the output of python -m calibration")
    source = json.loads((calibrated_dir / q["record"]).read_text())
    missing = [f for f in source["layers"] if f not in source.get("range_caches", {})
               or not (calibrated_dir / source["range_caches"][f]).is_file()]
    if missing:
        raise CalibrationError(f"{calibrated_dir} keeps no measured ranges for {missing} (made before {RANGES}/ was "
                               f"kept, or edited): calibrate it again")
    if meta.get("quantization"):
        raise CalibrationError(f"{export_dir} is already quantized; give its unquantized export")
    if meta["precision"] not in ("fp32", "bf16"):
        raise CalibrationError(f"{export_dir} is {meta['precision']}: ONNX Runtime's quantizer takes float32 graphs "
                               f"(bf16 ones are widened for it); export with --precision fp32 or bf16")
    if not _same_model(source_meta["model"], meta["model"]):
        raise CalibrationError(f"{calibrated_dir} and {export_dir} are exports of different models (weights or DiT "
                               f"configuration differ): ranges carry only between exports of the same weights")
    if _graph_layout(source_contract) != _graph_layout(contract):
        raise CalibrationError(f"{calibrated_dir} and {export_dir} have different graphs "
                               f"({[g[0] for g in _graph_layout(source_contract)]} vs "
                               f"{[g[0] for g in _graph_layout(contract)]}): export both with the same "
                               f"--clip-len, --dit-overlap, --dit-parts and --dit-shapes")
    if out.exists() and not overwrite:
        raise CalibrationError(f"{out} exists (pass --overwrite to replace it)")
    if out.resolve() in (export_dir.resolve(), calibrated_dir.resolve()):
        raise CalibrationError("--out must be a new folder")
    held = [read_clip(v, tuple(meta["input_size"]), max_frames) for v in holdout or []]
    for c in held:
        for note in c.notes:
            log(f"note: {c.path}: {note}")

    def fill(tmp: Path) -> dict:
        work = tmp / ".work"
        entries = {g.file: g for g in contract.graphs()}
        precision, chosen = source["precision"], set(q["groups"])
        float_files = {f: working_model(export_dir / f, work, meta["precision"]) for f in entries}
        final = {}
        (work / "final").mkdir()
        (tmp / RANGES).mkdir()
        for f, calibrated_layers in source["layers"].items():
            model = onnx.load(str(float_files[f]), load_external_data=False)
            log(f"  {f}: {len(calibrated_layers)} layers, ranges from {calibrated_dir / source['range_caches'][f]}")
            cache = work / f"{f}.ranges.json"
            to_target = ort_cache_for(read_ranges(calibrated_dir / source["range_caches"][f]), model,
                                      entries[f].role, f, cache)
            write_ranges(cache, model, entries[f].role, tmp / RANGES / f"{f}.json")      # this export's names: it can be applied on
            nodes = chosen_nodes(chosen, node_groups(model, entries[f].role), glue_nodes(model, entries[f].role))
            quantize_graph(float_files[f], work / "final" / f, [], precision, nodes, cache)
            got = quantized_nodes(onnx.load(str(work / "final" / f), load_external_data=False))
            want = [to_target[n] for n in calibrated_layers]
            if sorted(got) != sorted(want):
                raise CalibrationError(f"{f}: the quantized layers differ from {calibrated_dir}'s "
                                       f"({len(got)} vs {len(want)}; e.g. {sorted(set(got) ^ set(want))[:3]}): "
                                       f"the graphs are not the same modules")
            final[f] = work / "final" / f
        if held:
            quality = {"note": source["quality"]["note"],
                       "runs": held_out_quality(export_dir, meta, entries, float_files, final, held, precision),
                       **{k: v for k, v in source["quality"].items() if k == "ort_optimization"}}
            videos = [v for v in source["videos"] if v["role"] == "calibration"] + \
                     [c.record("held-out", len(c.frames)) for c in held]
        else:            # carried over, saying where it was measured (kept as is when already carried)
            w, h = source_meta["input_size"]
            quality = {**source["quality"], "measured_at": source["quality"].get("measured_at") or
                       f"{w}x{h} input, on {calibrated_dir}; not at this size (--holdout CLIP measures it)"}
            videos = source["videos"]
        layers, ranges = place_graphs(tmp, export_dir, meta, entries, final)     # moves the graphs: last
        record = {**source,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "source_export": {"path": str(export_dir), "precision": meta["precision"],
                                    "export_json_sha256": sha256_file(export_dir / "export.json")},
                  "ranges_from": {"path": str(calibrated_dir), "input_size": source_meta["input_size"],
                                  "export_json_sha256": sha256_file(calibrated_dir / "export.json"),
                                  "calibration_json_sha256": sha256_file(calibrated_dir / q["record"])},
                  "videos": videos, "layers": layers, "ranges": ranges,
                  "range_caches": {f: f"{RANGES}/{f}.json" for f in final}, "quality": quality}
        write_quantized_export_json(tmp, meta, record, sorted(chosen))
        return record

    log(f"applying {calibrated_dir}'s {source['precision']} calibration ({', '.join(sorted(q['groups']))}) "
        f"to {export_dir} ...")
    return write_folder(out, fill, t0)
