"""One file on a worker: restore_file (runtime.stream's restore, all or nothing) and the actor."""
import os
import time

from ..errors import RuntimeSetupError
from .jobs import remove_temporaries, temp_target

def restore_file(model, source: str, target: str, *, codec=None, crf=None, pix_fmt=None, resize=None,
                 in_flight=None, on_frames=None) -> dict:
    """`runtime.stream --engine B SOURCE -o TARGET` with a loaded model, written to a temporary
    name and renamed onto TARGET only when complete. A damaged input raises (VideoError) and
    leaves no output. on_frames(n): called as frames are written (progress, test hooks)."""
    from video import VideoError
    from ..restore_video import restore_video

    os.makedirs(os.path.dirname(target), exist_ok=True)
    temp = temp_target(target, os.getpid())
    result = restore_video(model, source, temp, writer_options=dict(codec=codec, crf=crf, pix_fmt=pix_fmt),
                           resize=resize, in_flight=in_flight, progress=False, on_frames=on_frames)
    if result.input_error or result.interrupted:
        # restore_video keeps a playable partial output for an interactive user; a batch wants
        # all or nothing, so that a re-run does not take the cut file for a finished one.
        os.remove(temp)
        raise VideoError(result.input_error or "interrupted", source=source)
    os.replace(temp, target)
    return {"frames": result.frames_out, "seconds": result.seconds}


class RestoreWorker:
    """A Ray actor (made with ray.remote in start_worker): one loaded model, one file at a time.
    write_delay: a test hook only: seconds to sleep after each written batch, so that a test can
    kill a worker in the middle of a file."""

    def __init__(self, engine: str, backend=None, device=None, threads=None, options=None, write_delay=0.0):
        import socket
        from ..load import load_bundle
        self.model = load_bundle(engine, backend, device=device, threads=threads)
        self.options = options or {}
        self.write_delay = write_delay
        self.frames_done = 0
        self.name = f"{os.getpid()}@{socket.gethostname()}"

    def hello(self) -> dict:
        return {"pid": os.getpid(), "name": self.name, "model": self.model.spec.describe()}

    def progress(self) -> int:
        return self.frames_done

    def restore(self, source: str, target: str) -> dict:
        from video import VideoError
        self.frames_done = 0

        def on_frames(n):
            self.frames_done += n
            if self.write_delay:
                time.sleep(self.write_delay)
        try:
            done = restore_file(self.model, source, target, on_frames=on_frames, **self.options)
        except (VideoError, RuntimeSetupError, ValueError, OSError) as e:
            # The file's own fault: reported, not retried (another worker would fail the same way).
            remove_temporaries(target, os.getpid())
            return {"error": str(e).splitlines()[0], "worker": self.name}
        return {**done, "worker": self.name}
