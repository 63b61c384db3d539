"""A whole video through a Session: reader thread -> model -> writer thread.

    reader thread   decodes batches of frames (video/), resizes them if asked, and puts
                    them in a queue of at most two batches
    this thread     pushes them into a Session whose chunks are in flight on the stage lanes
                    (CUDA streams or threads, runtime/lanes.py), and hands restored frames on
    writer thread   encodes them (video/: each frame at its input frame's time, colour
                    tags, audio copied), and moves the progress bar

Every queue is bounded and a Session holds at most `in_flight` chunks, so memory is flat for
streams of any length. Endings:
  * end of input           flush the Session, close the output (renamed onto its name).
  * corrupt / cut input    the frames decoded before the damage are restored and written, the
                           output is closed as a playable file, and the error is reported.
  * stop (Ctrl-C, SIGTERM) the chunks in flight are finished and written, the output is cut
                           there (playable), and the run reports `interrupted`.
  * any other error        the partial output is deleted and the error raised.
"""
import collections
import queue
import threading
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from .backend import LoadedModel
from .errors import InputSizeError
from video.resize import resize_frames
from .session import Session
from video import VideoError, VideoReader, VideoWriter

_END = object()


@dataclass
class RunResult:
    frames_in: int = 0
    frames_out: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    input_error: str | None = None         # the input was corrupt or truncated (what was read is restored)
    stages: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames_out / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out, "seconds": round(self.seconds, 3),
                "fps": round(self.fps, 3), "interrupted": self.interrupted, "input_error": self.input_error,
                "stages": self.stages, "memory": self.memory}


def check_input_size(model: LoadedModel, width: int, height: int, resize: bool, suggestions=()) -> None:
    want = model.spec.input_size
    if (width, height) == tuple(want) or resize:
        return
    fits = "".join(f"\n  {s}" for s in suggestions)
    hint = (f"These are built for {width}x{height}:{fits}" if fits else
            f"Build one for it: python -m export ... --input {width}x{height} --res OUTPUT_WxH, then "
            f"python -m engines --export DIR --gpu NAME.")
    raise InputSizeError(f"the input is {width}x{height}, but {model.spec.source} takes {want[0]}x{want[1]} frames. "
                         f"{hint}\nOr pass --resize to scale the input to {want[0]}x{want[1]}.")


def restore_video(model: LoadedModel, reader: VideoReader, writer: VideoWriter, *,
                  in_flight: int | None = None, overlap: bool | None = None, resize: bool | str = False,
                  stop: threading.Event | None = None, progress: bool | None = None) -> RunResult:
    """Restore `reader` into `writer` (which this closes, aborts or discards). `stop` ends the run
    early, as Ctrl-C does. in_flight / overlap: see Session (default: the model's default_in_flight).
    resize: False, True / "stretch" or "pad" (see resize.py).
    progress: True / False, None = when stderr is a terminal."""
    stop = stop or threading.Event()
    in_flight = in_flight or model.default_in_flight
    result = RunResult()
    spec = model.spec
    batch = spec.clip_len
    frames_q: queue.Queue = queue.Queue(maxsize=2)
    restored_q: queue.Queue = queue.Queue(maxsize=2)
    writer_error: list[BaseException] = []
    # One output frame per input frame, in order: the input's times wait here for their frames.
    times: collections.deque = collections.deque()
    bar = tqdm(total=reader.info.frame_count, unit="frame", desc="restoring", disable=None if progress is None
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
                frames, frame_times = reader.read_timed(batch)
                if not len(frames):
                    break
                times.extend(frame_times)
                if resize:
                    frames = resize_frames(frames, spec.input_size, "stretch" if resize is True else resize,
                                           reader.info.sample_aspect_ratio)
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
        except BaseException as e:
            writer_error.append(e)
            while restored_q.get() is not _END:    # let the main thread finish its puts
                pass

    session = Session(model, in_flight=in_flight, overlap=overlap)
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
