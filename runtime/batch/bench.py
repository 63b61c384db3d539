"""Throughput of runtime.batch with 1..N workers against the same restores in one process.

  python -m runtime.batch.bench --engine BUNDLE [--files 12] [--frames 48] [--workers 1 2] [--json FILE]

Makes --files demo clips of the bundle's input size, then in one Ray cluster:
  * baseline: every file through restore_file (the function runtime.stream and each batch worker
    use) in this process, one model loaded once, one file after another;
  * batch with W workers (BatchRun, fresh output folder each time), timed from the moment every
    worker has loaded its model to the last file done.
--rounds repeats of all modes, in alternating order; medians reported. Scheduling overhead per
file = (batch with 1 worker - baseline) / files: what Ray dispatch, progress polling and the
driver's bookkeeping add to each file. Also, inside the 1-worker runs: seconds per file spent
outside restore_video (dispatch, opening and renaming files), less exposed to a busy machine.
Workers and baseline both use --cpus-per-worker ONNX Runtime threads.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.batch.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True)
    p.add_argument("--files", type=int, default=12)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="repeats, in alternating order (medians reported)")
    p.add_argument("--json", help="write the numbers here")
    a = p.parse_args(argv)

    from .. import load_bundle
    from . import BatchRun, connect_ray, find_inputs, plan_jobs, restore_file
    from ..democlip import write_demo_clip

    model = load_bundle(a.engine, threads=a.cpus_per_worker)
    with tempfile.TemporaryDirectory(prefix="swiftvr-batch-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        for i in range(a.files):
            write_demo_clip(tmp / "in" / f"clip{i:03d}.mp4", size=model.spec.input_size, frames=a.frames)
        sources = find_inputs([str(tmp / "in")], None)

        connect_ray(None)
        restore_file(model, sources[0], str(tmp / "warm.mp4"))          # first-call costs out of the way
        times = {"baseline": [], **{f"workers_{w}": [] for w in a.workers}}
        inside = []          # 1 worker: seconds per file outside restore_video (dispatch, open, rename)
        for round_ in range(a.rounds):
            modes = list(times) if round_ % 2 == 0 else list(times)[::-1]     # alternate the order
            for mode in modes:
                out = tmp / f"{mode}-{round_}"
                if mode == "baseline":
                    start = time.perf_counter()
                    for job in plan_jobs(sources, str(out), None):
                        restore_file(model, job.source, job.target)
                    times[mode].append(time.perf_counter() - start)
                    continue
                workers = int(mode.split("_")[1])
                run = BatchRun(a.engine, plan_jobs(sources, str(out), None), workers=workers,
                               cpus_per_worker=a.cpus_per_worker, progress=False)
                done = run.run()
                assert all(r.status == "ok" for r in done), [r.reason for r in done if r.status != "ok"]
                busy = run.seconds - run.ready_seconds     # from every model loaded to the last file
                times[mode].append(busy)
                if workers == 1:
                    inside.append((busy - sum(r.seconds for r in done)) / a.files)
        results = {"engine": a.engine, "files": a.files, "frames_per_file": a.frames, "rounds": a.rounds,
                   "model": model.spec.describe()}
        for mode, seconds in times.items():
            results[mode] = {"seconds_median": round(statistics.median(seconds), 3),
                             "files_per_second": round(a.files / statistics.median(seconds), 3),
                             "seconds_each_round": [round(t, 3) for t in seconds]}
        if inside:
            per_file = (statistics.median(times["workers_1"]) - statistics.median(times["baseline"])) / a.files
            results["overhead_per_file_ms_vs_baseline"] = round(1000 * per_file, 1)
            results["outside_restore_per_file_ms"] = round(1000 * statistics.median(inside), 1)
    print(json.dumps(results, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
