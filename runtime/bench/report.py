"""runtime.bench's reports: the lines printed as it runs, the JSON file, the final table and summary.

Every function reads the report dict that runtime/bench/ladder.py fills (nothing is measured here).
"""
import json
from pathlib import Path

from contract.files import atomic_write

PAPER_H100 = {  # SwiftVR paper, one H100, PyTorch bf16, 24-frame chunks, stages sequential
    "1080p": {"encode_ms": 25.67, "dit_ms": 327.72, "decode_ms": 85.37, "fps": 54.42, "memory_gb": 29.26},
    "1440p": {"encode_ms": 45.10, "dit_ms": 566.31, "decode_ms": 151.74, "fps": 31.32, "memory_gb": 38.01},
    "2160p": {"fps": 13.84},
}


def flops_text(flops: float, per_second: bool = False) -> str:
    """1.2e14 -> '120 TFLOP', 4.5e6 -> '4.5 MFLOP' (tiny models on a CPU need the small units)."""
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(flops) >= size:
            break
    return f"{flops / size:.3g} {unit}FLOP" + ("/s" if per_second else "")


def say(line: str) -> None:
    print(line, flush=True)


def write_json(report: dict, path: str | None) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(report, indent=1, default=str).encode())


def describe_resolution(res, s, ceilings: dict | None) -> dict:
    """res: a ladder.Resolution, s: the ladder.Settings."""
    f = res.flops
    frames, rows, cols = res.grid
    info = {"input_size": list(res.input_size), "output_size": list(res.output_size),
            "dit_token_grid": list(res.grid), "dit_tokens": f["tokens"], "dit_flops": f,
            "dit_flops_per_output_frame": f["total"] / s.clip_len}
    text = (f"{res.name}: {res.input_size[0]}x{res.input_size[1]} -> {res.output_size[0]}x{res.output_size[1]}, "
            f"DiT {frames}x{rows}x{cols} = {f['tokens']} tokens per MIDDLE chunk; matmul per chunk "
            f"{flops_text(f['total'])} ({flops_text(f['total'] / s.clip_len)} per output frame; "
            f"attention {100 * (f['self_attention'] + f['cross_attention']) / f['total']:.0f}%)")
    if ceilings:
        rate = ceilings["matmul"]["tflops"]
        floor_ms = f["total"] / rate / 1e9
        info["dit_floor_ms"] = floor_ms
        text += (f"; DiT floor at {flops_text(rate * 1e12, True)}: {floor_ms:.3g} ms = "
                 f"{s.clip_len * 1e3 / floor_ms:.4g} FPS")
        if "matmul_fp8" in ceilings:
            fp8_floor = (f["fp8_linears"] / ceilings["matmul_fp8"]["tflops"]
                         + (f["total"] - f["fp8_linears"]) / rate) / 1e9
            info["dit_floor_fp8_ms"] = fp8_floor
            text += f" (FP8 linears: {fp8_floor:.3g} ms = {s.clip_len * 1e3 / fp8_floor:.4g} FPS)"
    info["summary"] = text
    return info


def describe_run(name: str, res: str, r: dict, report: dict) -> str:
    if r.get("status") != "ran":
        return f"{name} @ {res}: {r['status']} ({r.get('reason') or r.get('error')})"
    st = r["stages_ms"]
    eager = report["variants"].get("eager", {}).get(res, {})
    ratio = (f", x{r['sequential']['fps'] / eager['sequential']['fps']:.2f} / "
             f"x{r['overlapped']['fps'] / eager['sequential']['fps']:.2f} vs eager sequential"
             if eager.get("status") == "ran" else "")
    num = r["numerics"]
    check = "" if num == "baseline" else (f"; vs eager: latents max|d| {num['latents_max_abs']:.3g}, frames "
                                          + ("identical" if num["frames_identical"] else
                                             f"PSNR {num['frames_psnr_db']:.1f} dB"))
    return (f"{name} @ {res}: encode {st['encode']:.2f} / DiT {st['dit']:.2f} / decode {st['decode']:.2f} ms, "
            f"{r['sequential']['fps']:.2f} FPS sequential, {r['overlapped']['fps']:.2f} overlapped{ratio}; "
            f"first chunk {r['first_chunk_ms']:.1f} ms; DiT {flops_text(r['dit_tflops'] * 1e12, True)}"
            + (f" ({100 * r['dit_tflops'] / report['ceilings']['matmul']['tflops']:.0f}% of the matmul ceiling)"
               if "ceilings" in report else "") + check
            + (" [fp8 emulated: numerics only]" if r.get("emulated") else ""))


def format_summary(report: dict) -> str:
    """Per resolution: eager, the best variant without FP8, FP8; with the paper's anchor and the
    targets (1.5x the paper's FPS in bf16, 2.2x with FP8: 80 and 120 FPS at 1080p) for the 5b preset."""
    lines = []
    variants, best = report["variants"], report.get("best_without_fp8")
    five_b = report["settings"]["preset"] == "5b"
    for res in report["resolutions"]:
        parts = []
        for label, name in (("eager", "eager"), (f"best without fp8 ({best})", best), ("fp8", "fp8")):
            r = variants.get(name or "", {}).get(res, {})
            if r.get("status") == "ran":
                peak = r["sequential"]["peak_memory"]
                parts.append(f"{label} {r['sequential']['fps']:.2f} seq / {r['overlapped']['fps']:.2f} ovl FPS"
                             + (f", {peak['allocated_bytes'] / 1e9:.1f} GB" if peak else "")
                             + (" (emulated)" if r.get("emulated") else ""))
        paper = PAPER_H100.get(res) if five_b else None
        if paper:
            parts.append(f"paper H100 {paper['fps']} FPS"
                         + (f", {paper['memory_gb']} GB" if "memory_gb" in paper else "")
                         + f"; targets bf16 >= {paper['fps'] * 80 / 54.42:.1f}, "
                           f"fp8 >= {paper['fps'] * 120 / 54.42:.1f}")
        lines.append(f"{res}: " + "; ".join(parts))
    return "\n".join(lines)


def _gb(peak: dict | None, key: str) -> str:
    return "-" if not peak else f"{peak[key] / 1e9:.2f}"


def format_table(report: dict) -> str:
    rows = [("res", "variant", "kept", "enc ms", "DiT ms", "dec ms", "seq FPS", "ovl FPS", "x seq", "x ovl",
             "first ms", "GB alloc", "GB resv", "DiT TF/s", "lat max|d|", "PSNR dB")]
    kept = {e["variant"]: e["kept"] for e in report["ladder"]}
    for res in report["resolutions"]:
        eager = report["variants"].get("eager", {}).get(res, {})
        base = eager["sequential"]["fps"] if eager.get("status") == "ran" else None
        for name, per_res in report["variants"].items():
            r = per_res.get(res, {})
            if r.get("status") != "ran":
                rows.append((res, name, "-", r.get("status", "-"), *["" for _ in range(12)]))
                continue
            num = r["numerics"]
            lat = "base" if num == "baseline" else f"{num['latents_max_abs']:.2g}"
            psnr = ("base" if num == "baseline" else "inf" if num["frames_identical"]
                    else f"{num['frames_psnr_db']:.1f}")
            st, seq, ovl = r["stages_ms"], r["sequential"], r["overlapped"]
            mark = ("emul" if r.get("emulated") else "yes" if kept.get(name) else "no")
            rows.append((res, name, mark, f"{st['encode']:.1f}", f"{st['dit']:.1f}", f"{st['decode']:.1f}",
                         f"{seq['fps']:.2f}", f"{ovl['fps']:.2f}",
                         f"{seq['fps'] / base:.2f}" if base else "-", f"{ovl['fps'] / base:.2f}" if base else "-",
                         f"{r['first_chunk_ms']:.1f}", _gb(seq["peak_memory"], "allocated_bytes"),
                         _gb(seq["peak_memory"], "reserved_bytes"), f"{r['dit_tflops']:.3g}", lat, psnr))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) if i > 2 else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(lines)

