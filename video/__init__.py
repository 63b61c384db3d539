"""Video input and output: a leaf package (it imports no stage) shared by runtime/ (streams, batches)
and calibration/ (calibration clips, quality reports).

The runtime runs a reader thread and a writer thread around the two classes here:

    check_target("in.mp4", "out.mp4", overwrite=False)   # refuse destroying an input or a file
    reader = VideoReader("in.mp4")
    writer = VideoWriter("out.mp4", reader.info, width=2 * w, height=2 * h, audio_from=reader)
    # reader thread:  frames, times = reader.read_timed(24)     (uint8 [t, H, W, 3] RGB, seconds)
    # writer thread:  writer.write(restored_frames, times) ... writer.close()
    # on Ctrl-C:      writer.abort()   -> a playable file with what was written so far

Only numpy, PyAV (FFmpeg bindings) and the standard library are used, so this package
imports without torch. info.py: what a source is (VideoInfo, rates); reader.py: VideoReader (one
class per kind of source, picked by VideoReader(source));
writer.py: VideoWriter, with encoders.py (encoder, pixel format, time base) and audio.py
(packets from reader to writer); target.py: what an output may overwrite; resize.py: fitting
frames to the size a model takes (the one resize of the project).

Sources: a video file, an image sequence (a directory, or a printf pattern such as
frames/%05d.png), "-" for raw RGB24 frames on stdin, or any URL FFmpeg can open
(rtmp://, rtsp://, srt://, udp://, http://...).
Targets: a video file (written under a temporary name and renamed on close), an image
sequence, "-" for raw RGB24 on stdout, or a streaming URL.

Frames are always 8-bit RGB in their stored orientation; `VideoInfo.rotation` says how
to display them and the writer carries it (and the colour tags) over to the output.
Each output frame keeps its input frame's presentation time (reader.read_timed ->
writer.write(frames, times)): a constant-rate input stays constant-rate at its exact
rational rate, a variable-rate one keeps its timing. target.py holds the rules for what
an output may overwrite, and the temporary files.
"""

from .info import (
    IMAGE_EXTENSIONS,
    VideoError,
    VideoInfo,
    parse_rate,
    parse_size,
)
from .reader import AudioPassthrough, VideoReader, probe
from .target import check_target
from .writer import VideoWriter, choose_pix_fmt

__all__ = ["AudioPassthrough", "IMAGE_EXTENSIONS", "VideoError", "VideoInfo", "VideoReader", "VideoWriter",
           "check_target", "choose_pix_fmt", "parse_rate", "parse_size", "probe"]
