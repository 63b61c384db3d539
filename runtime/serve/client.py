"""The client side: connect(), streams, and what runtime.stream --serve drives (RemoteModel, ServedSession)."""
import os
from collections import deque

import numpy as np

from ..errors import RuntimeSetupError
from .common import (DEFAULT_TOKEN_FILE, NAMESPACE, OPEN_TIMEOUT_S, SERVICE, TOKEN_ENV, BadPush, Busy, Refused,
                     ServeError, StreamLost, check_frames, check_token, env_token, model_spec, read_token_file)

def read_token(token: str | None = None) -> str:
    """`token`, else SWIFTVR_SERVE_TOKEN, else the default token file (mode 0600)."""
    if token is not None:
        return check_token(token, "token")
    token = env_token()
    if token is not None:
        return token
    if os.path.lexists(DEFAULT_TOKEN_FILE):
        return read_token_file(DEFAULT_TOKEN_FILE)
    raise ServeError(f"no service token: pass token=, set {TOKEN_ENV}, or copy the file runtime.serve wrote "
                     f"({DEFAULT_TOKEN_FILE}, mode 600)")


def connect(address: str | None = "auto", *, token: str | None = None, name: str = SERVICE, tls_ca=None,
            tls_cert=None, tls_key=None):
    """A client of the service at `address`:
      grpcs://HOST:PORT, grpc://HOST:PORT   its gRPC endpoint (runtime.serve --listen): no access to the Ray
                                            cluster needed. tls_ca: the CA (PEM file) that signed the
                                            endpoint's certificate, when not a public one; tls_cert / tls_key:
                                            this client's certificate, when the endpoint asks for one.
      "auto", "HOST:6379", "ray://host:10001", None (the cluster this process is already in)
                                            join the Ray cluster and find the service `name` (trusted code:
                                            whoever joins the cluster can run anything on it). Ray's token
                                            (~/.ray/auth_token) is sent without RAY_AUTH_MODE=token exported
                                            (see batch.pool.send_ray_token).
    Both give the same streams: client.open() -> push / flush / submit + result / close."""
    token = read_token(token)
    if address and address.startswith(("grpc://", "grpcs://")):
        from .grpc_client import GrpcClient
        return GrpcClient(address, token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
    if tls_ca or tls_cert or tls_key:
        raise ServeError("TLS options are for a gRPC endpoint (grpcs://HOST:PORT)")
    import ray
    from ..batch.pool import join_ray
    if not ray.is_initialized():
        try:
            join_ray(address, namespace=NAMESPACE)
        except RuntimeSetupError as e:
            raise ServeError(str(e)) from None
    try:
        router = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        raise ServeError(f"no SwiftVR service {name!r} in the Ray cluster at {address}: start one with "
                         f"python -m runtime.serve --engine BUNDLE --address {address}") from None
    return Client(router, token)


class Client:
    def __init__(self, router, token: str):
        self.router, self.token = router, token

    def open(self) -> "Stream":
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError
        try:
            answer = ray.get(self.router.open.remote(self.token), timeout=OPEN_TIMEOUT_S)
        except GetTimeoutError:
            raise ServeError(f"the service did not answer in {OPEN_TIMEOUT_S:g} s; try again later") from None
        except RayActorError:
            raise ServeError("the service has stopped") from None
        if answer.get("error") == "busy":
            raise Busy("busy: every replica holds its limit of streams; try again later or add replicas")
        if "error" in answer:
            raise Refused("refused")
        return Stream(answer["id"], answer["replica"], answer["info"])


class Stream:
    """One live stream. push() / flush() in one thread; submit() + result() let a client keep a
    push on the wire while it reads the next frames (results still come back in order; at most
    PUSH_WINDOW pushes may be on the wire at once)."""

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
        from ray.exceptions import RayError
        from ..batch.pool import worker_deaths
        try:
            answer = ray.get(pending)
        except worker_deaths():
            self.closed = True
            raise StreamLost(f"stream {self.id[:6]}...: its replica died; the stream's state (ReAE, chunk "
                             f"history) is gone: open a new stream") from None
        except RayError as e:
            cause = str(getattr(e, "cause", None) or e).strip().splitlines()
            raise ServeError(f"the replica failed: {cause[-1] if cause else type(e).__name__}") from None
        error = answer.get("error")
        if error == "refused":
            raise Refused("refused")
        if error == "bad":
            raise BadPush(f"push refused: {answer['message']}")
        if error == "closed":
            self.closed = True
            raise StreamLost(f"stream {self.id[:6]}...: {answer['message']}; open a new stream")
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
    the service (on Ray or through its gRPC endpoint), its spec the service's model."""

    def __init__(self, address: str, stream=None, **connect_options):
        """address: of the cluster or endpoint (connect(), with connect_options); stream: one already
        open there (default: a new one)."""
        self.stream = stream or connect(address, **connect_options).open()
        info = self.stream.info
        served_by = info.get("served_by") or f"Ray replica {info['pid']}"
        self.spec = model_spec(info["spec"], f"{info['spec']['source']}, served by {served_by} at {address}")

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
