"""One video job: a source restored into a target. runtime.stream, runtime.batch and
runtime.stream --serve all run it.

    result = restore_video(model, "in.mp4", "out.mp4", resize="pad")

It owns every step of a run:
    source   video.VideoReader (reader_options: raw_size, raw_fps, strict, options)
    size     checked once against the model's; with `resize` the frames are fitted in one way,
             video/resize.py ("stretch" or "pad"), and the output's pixel aspect keeps the
             picture's displayed shape (output_sample_aspect)
    target   video.VideoWriter (writer_options: codec, crf, pix_fmt, container_format, options):
             each frame at its input frame's time, the colour tags, the audio copied from the reader
    model    a local Session on a LoadedModel, or a stream on a runtime.serve service
             (runtime.serve.RemoteModel); the job drives either through push / flush / drain / close

    reader thread   decodes batches of frames, resizes them if asked, and puts them in a queue of
                    at most two batches
    this thread     pushes them into the Session (its chunks in flight on the stage lanes,
                    runtime/lanes.py; a served stream keeps its pushes on the wire) and hands the
                    restored frames on
    writer thread   encodes them and moves the progress bar

Every queue is bounded and a Session holds at most `in_flight` chunks, so memory is flat for
streams of any length. Endings:
  * end of input           flush the Session, close the output (renamed onto its name).
  * corrupt / cut input    the frames decoded before the damage are restored and written, the
                           output is closed as a playable file, and the error is reported.
  * stop (Ctrl-C, SIGTERM) the chunks in flight are finished and written, the output is cut
                           there (playable), and the run reports `interrupted`. Stopped before
                           the model was ready: no output is opened (RunResult.opened False).
  * any other error        the partial output is deleted and the error raised.
"""
import collections
import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from video import VideoError, VideoReader, VideoWriter
from video.resize import describe_resize, output_sample_aspect, resize_frames

from .backend import LoadedModel
from .errors import InputSizeError
from .load import bundles_for_size
from .session import Session

_END = object()


@dataclass
class RunResult:
    input: str = ""                        # the source, as VideoInfo.describe() says
    model: str = ""                        # the model, as ModelSpec.describe() says
    in_flight: int | None = None
    overlap: bool | None = None            # None: the service's replica decides
    frames_in: int = 0
    frames_out: int = 0
    seconds: float = 0.0
    opened: bool = False                   # the output was opened (False: stopped before the model was ready)
    interrupted: bool = False
    input_error: str | None = None         # the input was corrupt or truncated (what was read is restored)
    stages: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames_out / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"input": self.input, "model": self.model, "in_flight": self.in_flight, "overlap": self.overlap,
                "frames_in": self.frames_in, "frames_out": self.frames_out, "seconds": round(self.seconds, 3),
                "fps": round(self.fps, 3), "interrupted": self.interrupted, "input_error": self.input_error,
                "stages": self.stages, "memory": self.memory}


def check_input_size(model, width: int, height: int, resize: str | None, engine: str | None = None) -> None:
    """Frames of another size than the model's need `resize`; the error names the bundles and export
    folders beside `engine` (where the model came from) that are built for the input's size."""
    want = model.spec.input_size
    if (width, height) == tuple(want) or resize:
        return
    suggestions = bundles_for_size(Path(engine).parent, (width, height)) if engine else []
    fits = "".join(f"\n  {s}" for s in suggestions)
    hint = (f"These are built for {width}x{height}:{fits}" if fits else
            f"Build one for it: python -m export ... --input {width}x{height} --res OUTPUT_WxH, then "
            f"python -m engines --export DIR --gpu NAME.")
    raise InputSizeError(f"the input is {width}x{height}, but {model.spec.source} takes {want[0]}x{want[1]} frames. "
                         f"{hint}\nOr pass --resize to scale the input to {want[0]}x{want[1]}.")


def open_session(model, in_flight: int | None, overlap: bool | None):
    """What the job drives: push(frames) -> the restored frames that are ready, flush() -> the rest,
    drain() -> the frames of the chunks under way (a stop), close(); frames_out, stats, in_flight
    and overlap. A LoadedModel gets a local Session, a served model (RemoteModel) its stream."""
    if isinstance(model, LoadedModel):
        return Session(model, in_flight=in_flight, overlap=overlap)
    return model.open(in_flight=in_flight)


def restore_video(model, source: str, target: str, *, reader_options: dict | None = None,
                  writer_options: dict | None = None, resize: str | None = None, in_flight: int | None = None,
                  overlap: bool | None = None, engine: str | None = None, stop: threading.Event | None = None,
                  progress: bool | None = None, say=None, on_frames=None) -> RunResult:
    """Restore `source` into `target`.

    model: a LoadedModel, a runtime.serve RemoteModel, or a function of the source's VideoInfo that
        gives one once the source is open (the torch backend builds its model for the input's size);
        a model the function made is closed at the end.
    resize: None (frames of another size are refused), "stretch" or "pad" (video/resize.py).
    in_flight / overlap: see Session (default: the model's default_in_flight).
    engine: the bundle or export folder the model came from: when the input's size does not fit,
        the bundles beside it built for that size are named.
    stop: ends the run early, as Ctrl-C does. progress: True / False, None = when stderr is a terminal.
    say(line): what a user reads (the source, the model, the resize, the writer's notes); None: quiet.
    on_frames(n): called on the writer thread after each n frames written.
    """
    stop = stop or threading.Event()
    say = say or (lambda line: None)
    with VideoReader(source, **(reader_options or {})) as reader:
        info = reader.info
        made = callable(model)
        if made:
            model = model(info)
        try:
            if stop.is_set():
                return RunResult(interrupted=True)
            check_input_size(model, info.width, info.height, resize, engine)
            resized = resize if resize and (info.width, info.height) != tuple(model.spec.input_size) else None
            writer = open_writer(model, reader, target, resized, writer_options or {}, say)
            return drive(model, reader, writer, resize=resized, in_flight=in_flight, overlap=overlap, stop=stop,
                         progress=progress, on_frames=on_frames)
        finally:
            if made:
                model.close()


def open_writer(model, reader: VideoReader, target: str, resized: str | None, writer_options: dict,
                say) -> VideoWriter:
    """Says what runs, and opens the output with the pixel aspect that shows it as the input is shown
    (one rule, see resize.py; resized: the mode when the frames are resized) and the input's audio."""
    info, spec = reader.info, model.spec
    size = (info.width, info.height)
    say(f"{info.describe()}\nmodel: {spec.describe()}")
    if resized:
        say(describe_resize(size, info.sample_aspect_ratio, spec.input_size, spec.output_size, resized))
    out_info = dataclasses.replace(info, sample_aspect_ratio=output_sample_aspect(
        size, info.sample_aspect_ratio, spec.output_size, resized))
    writer = VideoWriter(target, out_info, width=spec.output_size[0], height=spec.output_size[1],
                         audio_from=reader if info.has_audio else None, **writer_options)
    for note in writer.notes:
        say(f"note: {note}")
    return writer


def drive(model, reader: VideoReader, writer: VideoWriter, *, resize: str | None, in_flight: int | None,
          overlap: bool | None, stop: threading.Event, progress: bool | None, on_frames) -> RunResult:
    """Restore `reader` into `writer` (which this closes, aborts or discards), on reader and writer
    threads. resize: None, "stretch" or "pad": frames are fitted to the model's input size."""
    spec, info = model.spec, reader.info
    try:
        session = open_session(model, in_flight, overlap)
    except BaseException:
        writer.discard()
        raise
    result = RunResult(input=info.describe(), model=spec.describe(), in_flight=session.in_flight,
                       overlap=session.overlap, opened=True)
    frames_q: queue.Queue = queue.Queue(maxsize=2)
    restored_q: queue.Queue = queue.Queue(maxsize=2)
    writer_error: list[BaseException] = []
    # One output frame per input frame, in order: the input's times wait here for their frames.
    times: collections.deque = collections.deque()
    bar = tqdm(total=info.frame_count, unit="frame", desc="restoring", disable=None if progress is None
               else not progress, dynamic_ncols=True, smoothing=0.1)

    def put(q: queue.Queue, item) -> bool:
        """Put unless the run is stopping or the writer died (then nobody will take it)."""
        while not writer_error:
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if q is frames_q and stop.is_set():
                    return False
        return False

    def read_frames():
        try:
            while not stop.is_set():
                frames, frame_times = reader.read_timed(spec.clip_len)
                if not len(frames):
                    break
                times.extend(frame_times)
                if resize:
                    frames = resize_frames(frames, spec.input_size, resize, info.sample_aspect_ratio)
                if not put(frames_q, frames):
                    return
        except VideoError as e:
            put(frames_q, e)
        except BaseException as e:          # a bug: hand it to the main thread
            put(frames_q, e)
        put(frames_q, _END)

    def write_frames():
        try:
            while (frames := restored_q.get()) is not _END:
                writer.write(frames, [times.popleft() for _ in range(len(frames))])
                bar.update(len(frames))
                if on_frames:
                    on_frames(len(frames))
        except BaseException as e:
            writer_error.append(e)
            while restored_q.get() is not _END:    # let the main thread finish its puts
                pass

    reader_thread = threading.Thread(target=read_frames, name="swiftvr-reader", daemon=True)
    writer_thread = threading.Thread(target=write_frames, name="swiftvr-writer", daemon=True)
    start = time.perf_counter()
    reader_thread.start()
    writer_thread.start()
    stopped = False
    try:
        try:
            while not writer_error:
                if stop.is_set():
                    stopped = True
                    break
                try:
                    item = frames_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                if isinstance(item, VideoError):
                    result.input_error = str(item)
                    break
                if isinstance(item, BaseException):
                    raise item
                result.frames_in += len(item)
                restored = session.push(item)
                if len(restored):
                    put(restored_q, restored)
            if not writer_error:
                # Stopped: finish the chunks in flight only. Otherwise (end, or damaged input):
                # everything read so far is restored.
                put(restored_q, session.drain() if stopped else session.flush())
        finally:
            restored_q.put(_END)
            writer_thread.join()
            stop.set()                           # the reader stops at its next batch
            result.seconds = time.perf_counter() - start
            result.frames_out = session.frames_out
            result.stages = session.stats.summary()
            result.memory = model.memory()
            session.close()
            bar.close()
        if writer_error:
            raise writer_error[0]
        result.interrupted = stopped
        if result.input_error and not result.frames_out:
            raise VideoError(result.input_error)
        if stopped:
            writer.abort()                       # a playable file, cut where the video ends
        else:
            writer.close()
    except BaseException:
        writer.discard()
        raise
    finally:
        reader_thread.join(timeout=1.0)          # a reader blocked on a pipe or socket is left behind
    return result
