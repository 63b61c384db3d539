"""How close the quantized model's frames are to the unquantized model's: PSNR, SSIM, and the
largest per-pixel level difference, over whole restored clips.

With seeded random weights (the tiny preset, `make engine` without CKPT) these numbers measure
fidelity to the unquantized model, not restoration quality: every report says so.
"""
import numpy as np

FIDELITY_NOTE = ("fidelity of the quantized model to the unquantized one on held-out clips (not restoration "
                 "quality; with random weights nothing is restored)")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def _box(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k windows (valid positions) of [..., H, W], by summed-area tables."""
    s = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)]).cumsum(-2).cumsum(-1)
    return (s[..., k:, k:] - s[..., :-k, k:] - s[..., k:, :-k] + s[..., :-k, :-k]) / (k * k)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 7) -> float:
    """Mean SSIM (Wang et al. 2004; uniform 7x7 window, K1 0.01, K2 0.03) per channel, frames
    [T, H, W, C] uint8."""
    x = np.moveaxis(a.astype(np.float64), -1, 1)
    y = np.moveaxis(b.astype(np.float64), -1, 1)
    k = min(window, x.shape[-1], x.shape[-2])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _box(x, k), _box(y, k)
    vx, vy, cxy = _box(x * x, k) - mx ** 2, _box(y * y, k) - my ** 2, _box(x * y, k) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


# Frames compared at a time: SSIM in float64 holds about ten copies of the frames it compares, which
# for a whole 125-frame clip at 704x576 was over 10 GB (calibration's peak); 8 frames are ~0.1 GB.
FRAMES_PER_BATCH = 8


def compare_frames(got: np.ndarray, want: np.ndarray) -> dict:
    """PSNR, SSIM and the largest level difference of two clips of uint8 frames [T, H, W, C], in
    batches of FRAMES_PER_BATCH frames: the same numbers as at once (SSIM is a mean over frames of
    equal size), in memory that does not grow with the clip."""
    if got.shape != want.shape:
        raise ValueError(f"frames {got.shape} vs {want.shape}")
    squared, ssim_sum, worst = 0.0, 0.0, 0
    for start in range(0, len(got), FRAMES_PER_BATCH):
        a, b = got[start:start + FRAMES_PER_BATCH], want[start:start + FRAMES_PER_BATCH]
        squared += float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        ssim_sum += ssim(a, b) * len(a)
        worst = max(worst, int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()))
    mse = squared / got.size if got.size else 0.0
    value = float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))
    # PSNR None: identical frames (JSON has no infinity)
    return {"psnr_db": round(value, 3) if np.isfinite(value) else None,
            "ssim": round(ssim_sum / len(got), 5) if len(got) else None,
            "max_level_diff": worst, "frames": int(len(got))}


def combine(results: list[dict]) -> dict:
    """Several clips: PSNR from the pooled squared error, SSIM frame-weighted, the worst difference."""
    frames = sum(r["frames"] for r in results)
    mse = sum(r["frames"] * 255.0 ** 2 / 10 ** (r["psnr_db"] / 10) for r in results if r["psnr_db"] is not None)
    return {"psnr_db": round(float(10 * np.log10(255.0 ** 2 * frames / mse)), 3) if mse else None,
            "ssim": round(sum(r["ssim"] * r["frames"] for r in results) / frames, 5),
            "max_level_diff": max(r["max_level_diff"] for r in results), "frames": frames}


def format_report(quality: dict) -> list[str]:
    """Lines for inspect and the CLI: one per run (end to end, each stage alone)."""
    lines = [f"quality   {quality['note']}"]
    if quality.get("measured_at"):
        lines.append(f"  measured at {quality['measured_at']}")
    for name, r in quality["runs"].items():
        value = "identical" if r["psnr_db"] is None else f"{r['psnr_db']:7.2f} dB"
        lines.append(f"  {name:<13} PSNR {value:>10}  SSIM {r['ssim']:.4f}  max level diff "
                     f"{r['max_level_diff']:>3}  ({r['frames']} frames)")
    return lines


def compare_videos(got: str, want: str) -> dict:
    """compare_frames over two whole videos, image folders or patterns (video's reader),
    chunk by chunk so long clips need little memory."""
    from video.reader import VideoReader
    results = []
    with VideoReader(got) as a, VideoReader(want) as b:
        while True:
            x, y = a.read(), b.read()
            if len(x) != len(y) or (len(x) and x.shape != y.shape):
                raise ValueError(f"{got} and {want} differ in frame count or size "
                                 f"(at frame {a.frames_read - len(x)}: {x.shape} vs {y.shape})")
            if not len(x):
                break
            results.append(compare_frames(x, y))
    if not results:
        raise ValueError(f"{got} has no frames")
    return combine(results)


def main(argv=None) -> int:
    """python -m calibration.quality GOT WANT: how close a quantized bundle's output is to the
    unquantized one's (runtime.stream outputs of the same clip; lossless ones, e.g. PNG folders)."""
    import argparse
    import json
    import sys
    p = argparse.ArgumentParser(prog="python -m calibration.quality", description=main.__doc__.split("\n")[0])
    p.add_argument("got", help="video, image folder or pattern")
    p.add_argument("want", help="the reference: same frame count and size")
    a = p.parse_args(argv)
    from video.info import VideoError
    try:
        result = compare_videos(a.got, a.want)
    except (ValueError, OSError, VideoError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
