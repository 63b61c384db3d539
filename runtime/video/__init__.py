"""Video input and output for the streaming runtime.

The runtime runs a reader thread and a writer thread around the two classes here:

    reader = VideoReader("in.mp4")
    writer = VideoWriter("out.mp4", reader.info, width=2 * w, height=2 * h, audio_from=reader)
    # reader thread:  for chunk in reader: queue.put(chunk)      (uint8 [t, H, W, 3] RGB)
    # writer thread:  writer.write(restored_chunk) ... writer.close()
    # on Ctrl-C:      writer.abort()   -> a playable file with what was written so far

Only numpy, PyAV (FFmpeg bindings) and the standard library are used, so this package
imports without torch. info.py: what a source is; reader.py: VideoReader; writer.py: VideoWriter.

Sources: a video file, an image sequence (a directory, or a printf pattern such as
frames/%05d.png), "-" for raw RGB24 frames on stdin, or any URL FFmpeg can open
(rtmp://, rtsp://, srt://, udp://, http://...).
Targets: a video file (written under a temporary name and renamed on close), an image
sequence, "-" for raw RGB24 on stdout, or a streaming URL.

Frames are always 8-bit RGB in their stored orientation; `VideoInfo.rotation` says how
to display them and the writer carries it (and the colour tags) over to the output.
The output is constant frame rate at the input's exact rational rate.
"""

from .info import (
    IMAGE_EXTENSIONS,
    VideoError,
    VideoInfo,
    parse_rate,
    parse_size,
)
from .reader import AudioPassthrough, VideoReader, probe
from .writer import VideoWriter, choose_pix_fmt

__all__ = ["AudioPassthrough", "IMAGE_EXTENSIONS", "VideoError", "VideoInfo", "VideoReader", "VideoWriter",
           "choose_pix_fmt", "parse_rate", "parse_size", "probe"]
