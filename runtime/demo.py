"""`make demo`: restore a generated sample clip end to end through the runtime, and say where it is.

    python -m runtime.demo                      # tiny preset, random weights, cpu bundle, ONNX Runtime
    python -m runtime.demo --checkpoint CKPT    # the release model with the torch backend (a GPU if there is one)

Without a checkpoint the weights are random: the output shows that the pipeline runs (one frame out
per frame in, rate, colour tags and audio kept), not a restoration. Every step is a command a user
would type; each is printed before it runs. Steps whose output exists are reused.
"""
import argparse
from pathlib import Path
import shlex
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "build" / "demo"
INPUT_SIZE, SCALE, FRAMES = (96, 54), 2, 72


def run(*args: str) -> None:
    command = [sys.executable, "-m", *args]
    print("$ python -m " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="release checkpoint folder (default: tiny preset, random weights)")
    args = p.parse_args(argv)
    DEMO.mkdir(parents=True, exist_ok=True)
    clip = DEMO / "input.mp4"
    width, height = INPUT_SIZE
    try:
        if not clip.exists():
            run("runtime.democlip", str(clip), "--size", f"{width}x{height}", "--frames", str(FRAMES))
        if args.checkpoint:
            out = DEMO / "restored-checkpoint.mp4"
            run("runtime.stream", "--backend", "torch", "--checkpoint", args.checkpoint, "--scale", str(SCALE),
                str(clip), "-o", str(out), "--stats", str(DEMO / "stats-checkpoint.json"))
        else:
            export_dir, bundle = DEMO / "export-tiny", DEMO / "tiny.plan"
            out_w, out_h = width * SCALE, height * SCALE
            if not (export_dir / "export.json").exists():
                run("export", "--preset", "tiny", "--random-weights", "0", "--res", f"{out_w}x{out_h}",
                    "--scale", str(SCALE), "--clip-len", "8", "--precision", "fp32", "--overwrite",
                    "--out", str(export_dir))
            if not bundle.exists():
                run("engines", "--export", str(export_dir), "--gpu", "cpu", "--out", str(bundle))
            out = DEMO / "restored.mp4"
            run("runtime.stream", "--engine", str(bundle), str(clip), "-o", str(out),
                "--stats", str(DEMO / "stats.json"))
    except subprocess.CalledProcessError as e:
        print(f"demo failed at: {' '.join(map(str, e.cmd[2:]))} (exit {e.returncode})", file=sys.stderr)
        return 1
    print(f"\ninput:    {clip.relative_to(ROOT)}\nrestored: {out.relative_to(ROOT)}")
    if not args.checkpoint:
        print("These weights are random (tiny preset, seed 0): the output is not a restoration, it shows the\n"
              "pipeline working end to end. Run `make demo CKPT=/path/to/SwiftVR` with the release checkpoint.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
