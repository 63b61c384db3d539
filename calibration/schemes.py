"""Which INT8 scheme runs fastest and stays closest to float on this CPU: one graph of an export,
quantized under each scheme of calibration/quantize.py's INT8_SCHEMES, timed and compared with the
float graph. A benchmark command, not a test (docs/benchmarks.md has the numbers):

  python -m calibration.schemes --export B --video calib.mp4 --holdout held.mp4 --graph decoder.onnx
      [--schemes u8s8-minmax s8s8-minmax ...] [--max-frames 42] [--repeats 2]

The graph is fed what it sees in a stream (calibration/stream.py: the chunk protocol, state carried):
ranges from the calibration clip's feeds; timing and closeness on the held-out clip's feeds, each
call given the float graph's inputs, so the number is this graph's own error. Closeness: PSNR of
the uint8 frames for the decoder, else the SNR in dB of the first output. The sessions are the
runtime's (contract/onnxruntime.py session_options), so the times are what it would see.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from contract.graphs import ContractError, read_export_json

from .layers import CANDIDATES, glue_nodes, node_groups
from .quality import psnr
from .quantize import INT8_SCHEMES, quantize_graph, quantized_nodes
from .stream import record_feeds
from .video import CalibrationError, read_clip


def closeness(got: list, want: list) -> float:
    """PSNR of uint8 frames, else SNR (dB) of the first output; inf where identical."""
    a = np.concatenate([np.asarray(g[0]).ravel() for g in got])
    b = np.concatenate([np.asarray(w[0]).ravel() for w in want])
    if b.dtype == np.uint8:
        return psnr(a, b)
    noise = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.mean(b.astype(np.float64) ** 2) / noise))


def time_calls(session, feeds: list[dict], repeats: int) -> tuple[list, float]:
    """(outputs of one pass, median seconds per call over `repeats` further passes)."""
    outputs = [session.run(None, f) for f in feeds]       # also warms up
    times = []
    for _ in range(repeats):
        for f in feeds:
            t = time.perf_counter()
            session.run(None, f)
            times.append(time.perf_counter() - t)
    return outputs, statistics.median(times)


def compare_schemes(export_dir: Path, videos: list, holdout: list, graph: str, schemes: list[str], max_frames: int | None,
            repeats: int, threads: int | None = None) -> list[dict]:
    import onnxruntime as ort
    from contract.onnxruntime import graph_session, session_options
    meta, contract = read_export_json(export_dir)
    if meta.get("quantization") or meta["precision"] != "fp32":
        raise CalibrationError(f"{export_dir}: compare schemes on an unquantized fp32 export")
    entries = {g.file: g for g in contract.graphs()}
    if graph not in entries:
        raise CalibrationError(f"{export_dir} has no graph {graph!r}; it has {', '.join(entries)}")
    unknown = sorted(set(schemes) - set(INT8_SCHEMES))
    if unknown:
        raise CalibrationError(f"unknown schemes {unknown}; the schemes are {', '.join(INT8_SCHEMES)}")
    size = tuple(meta["input_size"])
    # Whole chunks per ReAE call (reae_slice 0): the published s/call figures (docs/benchmarks.md) are a chunk's.
    calib_feeds = record_feeds(export_dir, meta, [read_clip(v, size, max_frames).frames for v in videos],
                               reae_slice=0)[0][graph]
    held_feeds = record_feeds(export_dir, meta, [read_clip(v, size, max_frames).frames for v in holdout],
                              reae_slice=0)[0][graph]
    groups = node_groups(onnx.load(str(export_dir / graph), load_external_data=False), entries[graph].role)
    nodes = [n for g in CANDIDATES for n in groups.get(g, [])]
    nodes += glue_nodes(onnx.load(str(export_dir / graph), load_external_data=False), entries[graph].role)

    def session(path):
        return graph_session(path, session_options(ort, threads), ["CPUExecutionProvider"])

    reference, float_s = time_calls(session(export_dir / graph), held_feeds, repeats)
    rows = [{"scheme": "float32", "layers": 0, "s_per_call": round(float_s, 4), "speedup": 1.0, "closeness_db": None}]
    with tempfile.TemporaryDirectory(prefix="swiftvr-schemes-") as tmp:
        for name in schemes:
            out = Path(tmp) / f"{name}.onnx"
            quantize_graph(export_dir / graph, out, calib_feeds, INT8_SCHEMES[name], nodes, Path(tmp) / f"{name}.cache")
            got, seconds = time_calls(session(out), held_feeds, repeats)
            value = closeness(got, reference)
            rows.append({"scheme": name, "layers": len(quantized_nodes(onnx.load(str(out), load_external_data=False))), "s_per_call": round(seconds, 4),
                         "speedup": round(float_s / seconds, 3),
                         "closeness_db": None if np.isinf(value) else round(value, 2)})
            print(f"  {name:<16} {seconds:8.3f} s/call  {float_s / seconds:5.2f}x  {value:6.2f} dB", file=sys.stderr)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.schemes", description=__doc__.split("\n\n")[0])
    p.add_argument("--export", required=True, help="unquantized fp32 export folder")
    p.add_argument("--video", nargs="+", required=True, help="calibration clip(s): the ranges")
    p.add_argument("--holdout", nargs="+", required=True, help="held-out clip(s): timing and closeness")
    p.add_argument("--graph", default="decoder.onnx", help="graph file of the export (default %(default)s)")
    p.add_argument("--schemes", nargs="+", default=list(INT8_SCHEMES), help=f"of {', '.join(INT8_SCHEMES)}")
    p.add_argument("--max-frames", type=int, help="frames read per clip (default all)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes over the held-out feeds (default 2)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default one per core)")
    p.add_argument("--json", metavar="FILE", help="also write the rows here")
    a = p.parse_args(argv)
    try:
        rows = compare_schemes(Path(a.export), a.video, a.holdout, a.graph, a.schemes, a.max_frames, a.repeats, a.threads)
    except (CalibrationError, ContractError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'scheme':<16} {'layers':>6} {'s/call':>8} {'speedup':>8} {'closeness dB':>13}")
    for r in rows:
        close = "-" if r["closeness_db"] is None and r["scheme"] == "float32" else r["closeness_db"]
        print(f"{r['scheme']:<16} {r['layers']:>6} {r['s_per_call']:>8.3f} {r['speedup']:>7.2f}x {close!s:>13}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
