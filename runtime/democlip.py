"""A synthetic test clip for demos and smoke tests: moving shapes, fine texture, mild noise and blur
(something for a restoration model to work on) and a stereo tone, written with PyAV.

    python -m runtime.democlip build/demo/input.mp4 --size 96x54 --frames 48 [--fps 30000/1001]
"""
import argparse
from fractions import Fraction

import av
import numpy as np

from video import parse_rate, parse_size


def demo_frames(count: int, width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(count):
        t = i / 12
        image = np.stack([128 + 80 * np.sin(x / 6 + t), 128 + 80 * np.cos(y / 5 - t),
                          128 + 60 * np.sin((x + y) / 9)], -1)
        cx, cy = width * (0.5 + 0.3 * np.sin(t)), height * (0.5 + 0.3 * np.cos(1.3 * t))
        disc = (x - cx) ** 2 + (y - cy) ** 2 < (0.15 * min(width, height)) ** 2
        image[disc] = (240, 220, 40)
        image[(x.astype(int) // 4 + y.astype(int) // 4) % 2 == 0] *= 0.85        # fine checker texture
        image = (image + np.roll(image, 1, 1) + np.roll(image, 1, 0)) / 3             # a little blur
        yield np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def write_demo_clip(path, size=(96, 54), frames=48, fps=Fraction(30000, 1001)) -> None:
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps, options={"crf": "28"})   # visible compression too
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        video.codec_context.color_primaries = video.codec_context.color_trc = video.codec_context.colorspace = 1
        audio = container.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        samples, step = 0, audio.codec_context.frame_size or 1024
        for i, image in enumerate(demo_frames(frames, width, height)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
            while samples < 48000 * (i + 1) / fps:       # audio interleaved with the video, as in real files
                t = np.arange(samples, samples + step) / 48000
                tone = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
                chunk = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                chunk.sample_rate, chunk.pts = 48000, samples
                container.mux(audio.encode(chunk))
                samples += step
        container.mux(video.encode(None))
        container.mux(audio.encode(None))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m runtime.democlip", description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--size", default="96x54", help="WxH (default 96x54)")
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--fps", default="30000/1001")
    a = p.parse_args(argv)
    write_demo_clip(a.out, parse_size(a.size), a.frames, parse_rate(a.fps))
    print(f"wrote {a.out}: {a.size}, {a.frames} frames at {a.fps} fps, with a stereo tone")


if __name__ == "__main__":
    main()
