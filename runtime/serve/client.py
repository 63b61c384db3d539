"""The client side: connect(), streams, and what runtime.stream --serve drives (RemoteModel, ServedSession)."""
import os
from collections import deque

import numpy as np

from .common import (DEFAULT_TOKEN_FILE, NAMESPACE, SERVICE, TOKEN_ENV, BadPush, Busy, Refused, ServeError,
                     StreamLost, check_frames)

def read_token(token: str | None = None) -> str:
    token = token or os.environ.get(TOKEN_ENV)
    if not token and DEFAULT_TOKEN_FILE.is_file():
        token = DEFAULT_TOKEN_FILE.read_text().strip()
    if not token:
        raise ServeError(f"no service token: pass token=, set {TOKEN_ENV}, or copy the file runtime.serve wrote "
                         f"({DEFAULT_TOKEN_FILE})")
    return token


def connect(address: str | None = "auto", *, token: str | None = None, name: str = SERVICE) -> "Client":
    """Join the Ray cluster at `address` ("auto", "ray://host:10001"; None: the one this process
    is already in) and find the service `name`."""
    import ray
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        ray.init(address=address, log_to_driver=False, namespace=NAMESPACE)
    try:
        router = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        raise ServeError(f"no SwiftVR service {name!r} in the Ray cluster at {address}: start one with "
                         f"python -m runtime.serve --engine BUNDLE --address {address}") from None
    return Client(router, read_token(token))


class Client:
    def __init__(self, router, token: str):
        self.router, self.token = router, token

    def open(self) -> "Stream":
        import ray
        answer = ray.get(self.router.open.remote(self.token))
        if answer.get("error") == "busy":
            raise Busy("busy: every replica holds its limit of streams; try again later or add replicas")
        if "error" in answer:
            raise Refused("refused")
        return Stream(answer["id"], answer["replica"], answer["info"])


class Stream:
    """One live stream. push() / flush() in one thread; submit() + result() let a client keep a
    push on the wire while it reads the next frames (results still come back in order)."""

    def __init__(self, stream_id: str, replica, info: dict):
        self.id, self.replica, self.info = stream_id, replica, info
        self.input_size, self.output_size = tuple(info["spec"]["input_size"]), tuple(info["spec"]["output_size"])
        self.seq = 0
        self.closed = False

    def submit(self, frames):
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        why = check_frames(frames, self.input_size, self.info["max_push_frames"])
        if why:
            raise BadPush(f"push refused: {why}")
        return self.replica.push.remote(self.id, self._next(), frames)

    def result(self, pending) -> np.ndarray:
        import ray
        from ray.exceptions import RayActorError
        try:
            answer = ray.get(pending)
        except RayActorError:
            self.closed = True
            raise StreamLost(f"stream {self.id[:6]}...: its replica died; the stream's state (ReAE, chunk "
                             f"history) is gone: open a new stream") from None
        error = answer.get("error")
        if error == "refused":
            raise Refused("refused")
        if error == "bad":
            raise BadPush(f"push refused: {answer['message']}")
        if error:
            raise ServeError(answer["message"])
        return answer["frames"]

    def push(self, frames) -> np.ndarray:
        return self.result(self.submit(frames))

    def flush(self) -> np.ndarray:
        out = self.result(self.replica.flush.remote(self.id, self._next()))
        self.closed = True
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.replica.close.remote(self.id)
            except Exception:       # the replica is gone: nothing to close
                pass

    def _next(self) -> int:
        if self.closed:
            raise ServeError("the stream is closed")
        self.seq += 1
        return self.seq - 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- runtime.stream --serve ----------------------------------------------------------------------

class RemoteModel:
    """A model served by runtime.serve, as runtime.restore_video drives one: one stream opened on
    the service, its spec the service's model."""

    def __init__(self, address: str, stream: Stream | None = None):
        """address: of the cluster (connect()); stream: one already open there (default: a new one)."""
        from ..spec import ModelSpec
        self.stream = stream or connect(address).open()
        fields = dict(self.stream.info["spec"])
        fields["source"] = f"{fields['source']}, served by Ray replica {self.stream.info['pid']} at {address}"
        self.spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    @property
    def default_in_flight(self) -> int:
        """Pushes on the wire at once: with 2, one travels while the replica restores the other."""
        return 2

    def open(self, in_flight: int | None = None) -> "ServedSession":
        return ServedSession(self.stream, self.default_in_flight if in_flight is None else in_flight)

    def memory(self) -> dict:
        return {"device": self.spec.device, "in_use_bytes": None, "peak_bytes": None}

    def close(self) -> None:
        self.stream.close()


class ServedSession:
    """A served stream driven as a local Session is (push / flush / drain / close): up to
    `in_flight` pushes on the wire at once, their frames returned in order."""

    overlap = None                   # the replica's Session decides

    def __init__(self, stream: Stream, in_flight: int):
        from ..lanes import StageStats
        self.stream, self.in_flight = stream, in_flight
        self.pending: deque = deque()
        self.frames_out = 0
        self.stats = StageStats()    # the stage timings are the replica's: none on this side

    def push(self, frames) -> np.ndarray:
        self.pending.append(self.stream.submit(frames))
        return self._collect(keep=self.in_flight - 1)

    def flush(self) -> np.ndarray:
        return self._collect(keep=0, last=self.stream.flush)

    def drain(self) -> np.ndarray:
        """The pushes on the wire; the frames the replica holds for a next chunk go with the stream."""
        return self._collect(keep=0)

    def close(self) -> None:
        self.stream.close()

    def _collect(self, keep: int, last=None) -> np.ndarray:
        """The frames of the oldest pushes until `keep` are left on the wire, then of last()."""
        width, height = self.stream.output_size
        out = [np.zeros((0, height, width, 3), np.uint8)]
        while len(self.pending) > keep:
            out.append(self.stream.result(self.pending.popleft()))
        if last:
            out.append(last())
        frames = np.concatenate(out)
        self.frames_out += len(frames)
        return frames
