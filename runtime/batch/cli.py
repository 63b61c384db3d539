"""python -m runtime.batch (runtime/batch/__main__.py runs main()): the command line, the summary table and the JSON report."""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

from . import __doc__ as DOC
from ..errors import RuntimeSetupError
from .jobs import FileResult, find_inputs, plan_jobs
from .pool import BatchRun, connect_ray

EXIT_FAILED, EXIT_USAGE = 1, 2


def summary_table(results: list[FileResult], events: list[str], seconds: float) -> str:
    rows = [("file", "status", "frames", "fps", "seconds", "tries", "reason")]
    for r in results:
        rows.append((Path(r.source).name, r.status, str(r.frames), f"{r.fps:.1f}", f"{r.seconds:.1f}",
                     str(r.attempts), r.reason))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:6], widths)) + "  " + row[6] for row in rows]
    count = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    frames = sum(r.frames for r in results)
    lines.append(f"{count['ok']} ok, {count['failed']} failed, {count['skipped']} skipped; {frames} frames in "
                 f"{seconds:.1f} s ({frames / seconds if seconds else 0:.1f} frames/s, "
                 f"{count['ok'] / seconds if seconds else 0:.2f} files/s)")
    lines += [f"event: {e}" for e in events]
    return "\n".join(lines)


def report(run: BatchRun) -> dict:
    ok = [r for r in run.results if r.status == "ok"]
    return {"engine": run.engine, "workers": run.workers, "gpus_per_worker": run.gpus, "seconds": round(run.seconds, 3),
            "workers_ready_seconds": round(run.ready_seconds, 3),
            "files_per_second": round(len(ok) / run.seconds, 4) if run.seconds else 0,
            "counts": {s: sum(r.status == s for r in run.results) for s in ("ok", "failed", "skipped")},
            "events": run.events,
            "files": [{**dataclasses.asdict(r), "fps": round(r.fps, 3), "seconds": round(r.seconds, 3)}
                      for r in run.results]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.batch", description=DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="video files, folders (searched recursively) or glob patterns")
    p.add_argument("--input-list", metavar="FILE", help="a file with one input path a line")
    p.add_argument("--engine", required=True, help="bundle file or export folder, readable on every node")
    p.add_argument("--backend", help="tensorrt, onnxruntime or torch (default: from the bundle)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (shared by the nodes)")
    p.add_argument("--ext", help="output extension, e.g. .mkv (default: the input's)")
    p.add_argument("--address", help="Ray cluster: auto, ray://HOST:10001 (default: a local cluster for this run)")
    p.add_argument("--workers", type=int, help="actors, one loaded model each (default: as many as fit)")
    p.add_argument("--gpus-per-worker", type=float, help="Ray num_gpus per actor (default: 1 if the cluster "
                                                         "has GPUs, else 0)")
    p.add_argument("--cpus-per-worker", type=float, default=1, help="Ray num_cpus per actor (default 1)")
    p.add_argument("--retries", type=int, default=2, help="times a file is retried after its worker died (default 2)")
    p.add_argument("--report", metavar="FILE.json", help="JSON report (default: OUT/batch-report.json)")
    p.add_argument("--codec", help="video encoder (as runtime.stream)")
    p.add_argument("--crf", type=int, help="constant quality (as runtime.stream)")
    p.add_argument("--pix-fmt", help="output pixel format (as runtime.stream)")
    p.add_argument("--resize", nargs="?", const="stretch", choices=["stretch", "pad"], help="as runtime.stream")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: when stderr is a terminal)")
    a = p.parse_args(argv)
    if a.workers is not None and a.workers < 1:
        p.error(f"--workers must be at least 1, got {a.workers}")
    if a.retries < 0:
        p.error(f"--retries must be at least 0, got {a.retries}")
    if a.ext and not a.ext.startswith("."):
        a.ext = "." + a.ext
    try:
        a.sources = find_inputs(a.inputs, a.input_list)
    except (ValueError, OSError) as e:
        p.error(str(e))
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import ray
    jobs = plan_jobs(a.sources, a.out, a.ext)
    joined = connect_ray(a.address)
    try:
        resources = ray.cluster_resources()
        gpus = a.gpus_per_worker if a.gpus_per_worker is not None else (1 if resources.get("GPU") else 0)
        if gpus and not resources.get("GPU"):
            print("error: --gpus-per-worker > 0 but the Ray cluster has no GPU", file=sys.stderr)
            return EXIT_USAGE
        fits = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1) // a.cpus_per_worker)
        workers = a.workers or max(1, fits)
        options = {"codec": a.codec, "crf": a.crf, "pix_fmt": a.pix_fmt, "resize": a.resize}
        run = BatchRun(a.engine, jobs, workers=workers, gpus_per_worker=gpus, cpus_per_worker=a.cpus_per_worker,
                       retries=a.retries, backend=a.backend, options=options, progress=a.progress)
        try:
            results = run.run()
        except RuntimeSetupError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
    finally:
        if joined:
            ray.shutdown()
    print(summary_table(results, run.events, run.seconds), file=sys.stderr)
    report_path = Path(a.report or Path(a.out) / "batch-report.json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report(run), indent=1))
    return EXIT_FAILED if any(r.status == "failed" for r in results) else 0

