"""Live streams as sessions on Ray actors, reachable from any process of the cluster.

  python -m runtime.serve --engine engines/1080p.plan --replicas 4            (a local cluster)
  python -m runtime.serve --engine B --replicas 8 --address auto              (a running cluster)
  python -m runtime.stream --serve auto in.mp4 -o out.mp4                     (a client, same CLI)

    client = runtime.serve.connect("auto")        # or "ray://head:10001"
    stream = client.open()                        # runtime.serve.Busy when every replica is full
    out = stream.push(frames)                     # uint8 [T, H, W, 3] in -> restored frames, in order
    out = stream.flush()                          # end of stream: the rest

A replica is an actor holding one loaded model and up to --max-streams Sessions; a stream lives on
one replica for its whole life (its ReAE states and chunk history are there). When its replica
dies, the stream's next call raises StreamLost; other streams go on. A router (a named, detached
actor) opens streams on the least loaded replica and replaces dead ones.

Isolation: a stream is addressed by an unguessable id (secrets.token_urlsafe(16)), which is its
only key; opening a stream needs the service token. Wrong ids and tokens get "refused", no detail.
Each push is checked (dtype, frame size, count) against the bundle before anything is queued; a
bad push is refused and the stream goes on. There is no endpoint outside Ray: Ray's own endpoints
have no authentication that protects them from the network; keep them on a private one (README).
"""
import argparse
import hmac
import os
import secrets
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from .errors import RuntimeSetupError

SERVICE, NAMESPACE = "swiftvr-serve", "swiftvr"
TOKEN_ENV = "SWIFTVR_SERVE_TOKEN"
DEFAULT_TOKEN_FILE = Path.home() / ".config" / "swiftvr" / "serve.token"
ORDER_TIMEOUT_S = 60           # how long a push waits for the pushes before it (pipelined clients)


class ServeError(RuntimeSetupError):
    """The service said no (the message says why)."""


class Busy(ServeError):
    """Every replica holds its limit of streams: try later, or add replicas."""


class Refused(ServeError):
    """A wrong token or stream id."""


class StreamLost(ServeError):
    """The replica holding the stream died: its state is gone, open a new stream."""


class BadPush(ServeError, ValueError):
    """Frames the model cannot take; the stream is unchanged."""


def check_frames(frames, input_size: tuple[int, int], max_frames: int) -> str | None:
    """Why these frames cannot be pushed, or None. Checked by the client and again by the replica."""
    width, height = input_size
    if not isinstance(frames, np.ndarray):
        return f"frames must be a numpy array, got {type(frames).__name__}"
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        return f"frames must be uint8 RGB [T, H, W, 3], got {frames.dtype} {list(frames.shape)}"
    if frames.shape[1:3] != (height, width):
        return f"frames are {frames.shape[2]}x{frames.shape[1]}, the model takes {width}x{height}"
    if not 1 <= len(frames) <= max_frames:
        return f"a push holds 1..{max_frames} frames, got {len(frames)}"
    return None


# ---- the replica (a Ray actor) -------------------------------------------------------------------

class _StreamState:
    def __init__(self, session):
        self.session = session
        self.next_seq = 0
        self.order = threading.Condition()
        self.last_used = time.monotonic()


class StreamReplica:
    """One loaded model, many Sessions. Threaded (max_concurrency): streams run side by side, each
    Session used by one thread at a time (its condition), its pushes in sequence order."""

    def __init__(self, engine, backend=None, device=None, threads=None, max_streams=4, max_push_frames=None,
                 idle_timeout_s=600.0):
        from .load import load_bundle
        self.model = load_bundle(engine, backend, device=device, threads=threads)
        spec = self.model.spec
        self.max_streams, self.idle_timeout_s = max_streams, idle_timeout_s
        self.max_push_frames = max_push_frames or 4 * (spec.clip_len + 4)
        self.streams: dict[str, _StreamState] = {}
        self.lock = threading.Lock()

    def info(self) -> dict:
        import dataclasses
        return {"pid": os.getpid(), "spec": dataclasses.asdict(self.model.spec),
                "max_push_frames": self.max_push_frames, "max_streams": self.max_streams}

    def load(self) -> int:
        """Open streams, after closing those idle too long (their clients are gone)."""
        now = time.monotonic()
        with self.lock:
            idle = [sid for sid, st in self.streams.items() if now - st.last_used > self.idle_timeout_s]
            for sid in idle:
                self.streams.pop(sid).session.close()
            return len(self.streams)

    def open(self) -> str | None:
        from .session import Session
        self.load()
        with self.lock:
            if len(self.streams) >= self.max_streams:
                return None
            stream_id = secrets.token_urlsafe(16)
            self.streams[stream_id] = _StreamState(Session(self.model))
            return stream_id

    def _call(self, stream_id: str, seq: int, work) -> dict:
        with self.lock:
            st = self.streams.get(stream_id) if isinstance(stream_id, str) else None
        if st is None:
            return {"error": "refused"}
        with st.order:
            if not st.order.wait_for(lambda: st.next_seq >= seq, timeout=ORDER_TIMEOUT_S) or st.next_seq != seq:
                return {"error": "order", "message": f"push {seq} came out of order (expected {st.next_seq})"}
            try:
                st.last_used = time.monotonic()
                return work(st)
            finally:
                st.next_seq += 1
                st.order.notify_all()

    def push(self, stream_id: str, seq: int, frames) -> dict:
        def work(st):
            why = check_frames(frames, self.model.spec.input_size, self.max_push_frames)
            if why:
                return {"error": "bad", "message": why}
            return {"frames": st.session.push(frames)}
        return self._call(stream_id, seq, work)

    def flush(self, stream_id: str, seq: int) -> dict:
        def work(st):
            out = st.session.flush()
            with self.lock:
                self.streams.pop(stream_id, None)
            st.session.close()
            return {"frames": out}
        return self._call(stream_id, seq, work)

    def close(self, stream_id: str) -> None:
        with self.lock:
            st = self.streams.pop(stream_id, None) if isinstance(stream_id, str) else None
        if st is not None:
            with st.order:
                st.session.close()


# ---- the router (a named, detached Ray actor) ----------------------------------------------------

class Router:
    def __init__(self, token: str, replicas: int, replica_args: tuple, replica_options: dict):
        self.token = token
        self.replica_args, self.replica_options = replica_args, replica_options
        self.replicas = [self._start() for _ in range(replicas)]
        self.info = None

    def _start(self):
        import ray
        return ray.remote(StreamReplica).options(**self.replica_options).remote(*self.replica_args)

    def _allowed(self, token) -> bool:
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.token.encode())

    def ready(self) -> dict:
        import ray
        infos = ray.get([r.info.remote() for r in self.replicas])
        self.info = infos[0]
        return {"replicas": len(infos), **self.info}

    def open(self, token) -> dict:
        """A new stream on the least loaded live replica (dead ones are replaced first)."""
        import ray
        from ray.exceptions import RayActorError
        if not self._allowed(token):
            return {"error": "refused"}
        loads = []
        for i, replica in enumerate(self.replicas):
            try:
                loads.append((ray.get(replica.load.remote(), timeout=30), i))
            except RayActorError:
                self.replicas[i] = self._start()    # its streams are lost; their clients are told
        for _, i in sorted(loads):
            stream_id = ray.get(self.replicas[i].open.remote())
            if stream_id:
                return {"id": stream_id, "replica": self.replicas[i], "info": self.info}
        return {"error": "busy"}

    def shutdown(self) -> None:
        import ray
        for replica in self.replicas:
            ray.kill(replica)


# ---- the client ----------------------------------------------------------------------------------

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
    """What runtime.stream needs of a model (its spec) for a stream opened on the service."""

    def __init__(self, address: str):
        from .spec import ModelSpec
        self.stream = connect(address).open()
        fields = dict(self.stream.info["spec"])
        fields["source"] = f"{fields['source']}, served by Ray replica {self.stream.info['pid']} at {address}"
        self.spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        self.default_in_flight = 2

    def memory(self) -> dict:
        return {"device": self.spec.device, "in_use_bytes": None, "peak_bytes": None}


def restore_remote(model: RemoteModel, reader, writer, *, resize=False, stop=None, progress=None, in_flight=2):
    """restore_video through a served stream: read, push (up to `in_flight` pushes on the wire),
    write in order. Same endings as restore_video: damaged input keeps what was read."""
    from tqdm import tqdm
    from .resize import resize_frames
    from .restore_video import RunResult
    from .video import VideoError

    stream, result, spec = model.stream, RunResult(), model.spec
    stop = stop or threading.Event()
    times, pending = deque(), deque()
    bar = tqdm(total=reader.info.frame_count, unit="frame", desc="restoring (served)",
               disable=None if progress is None else not progress, dynamic_ncols=True)

    def write(frames):
        if len(frames):
            writer.write(frames, [times.popleft() for _ in range(len(frames))])
            result.frames_out += len(frames)
            bar.update(len(frames))

    start = time.perf_counter()
    try:
        while not stop.is_set():
            try:
                frames, frame_times = reader.read_timed(spec.clip_len)
            except VideoError as e:
                result.input_error = str(e)
                break
            if not len(frames):
                break
            times.extend(frame_times)
            if resize:
                frames = resize_frames(frames, spec.input_size, "stretch" if resize is True else resize,
                                       reader.info.sample_aspect_ratio)
            result.frames_in += len(frames)
            pending.append(stream.submit(frames))
            while len(pending) >= in_flight:
                write(stream.result(pending.popleft()))
        while pending:
            write(stream.result(pending.popleft()))
        write(stream.flush())
        result.seconds = time.perf_counter() - start
        result.interrupted = stop.is_set()
        if result.input_error and not result.frames_out:
            raise VideoError(result.input_error)
        writer.close()
    except BaseException:
        writer.discard()
        stream.close()
        raise
    finally:
        bar.close()
    return result


# ---- command line --------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, help="bundle file or export folder, readable on every node")
    p.add_argument("--backend", help="tensorrt, onnxruntime or torch (default: from the bundle)")
    p.add_argument("--replicas", type=int, default=1, help="actors, one loaded model each (default 1)")
    p.add_argument("--address", help="Ray cluster: auto, ray://HOST:10001 (default: a private local cluster)")
    p.add_argument("--gpus-per-replica", type=float, help="Ray num_gpus per replica (default: 1 with GPUs, else 0)")
    p.add_argument("--cpus-per-replica", type=float, default=1, help="Ray num_cpus per replica (default 1)")
    p.add_argument("--max-streams", type=int, default=4, help="streams per replica before 'busy' (default 4)")
    p.add_argument("--max-push-frames", type=int, help="frames per push (default 4 chunks)")
    p.add_argument("--idle-timeout", type=float, default=600, help="seconds before an idle stream is closed")
    p.add_argument("--name", default=SERVICE, help=f"service name in the cluster (default {SERVICE})")
    p.add_argument("--token-file", default=str(DEFAULT_TOKEN_FILE),
                   help=f"where the service token is read from, or written to (mode 0600) if missing "
                        f"(default {DEFAULT_TOKEN_FILE}; {TOKEN_ENV} overrides)")
    a = p.parse_args(argv)
    for flag, value in (("--replicas", a.replicas), ("--max-streams", a.max_streams)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    return a


def service_token(path: str) -> str:
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = Path(path)
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def start_service(engine: str, *, replicas: int = 1, token: str, gpus: float = 0, cpus: float = 1,
                  max_streams: int = 4, max_push_frames=None, idle_timeout_s=600.0, backend=None, name=SERVICE):
    """Start the router and its replicas in the Ray cluster this process is in; returns the router
    once every replica has loaded the model."""
    import ray
    threads = max(1, int(cpus)) if not gpus else None
    replica_args = (str(Path(engine).absolute()), backend, None, threads, max_streams, max_push_frames,
                    idle_timeout_s)
    # Threads: each stream's push, plus a few for control calls (open, load, close).
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_concurrency": 2 * max_streams + 4}
    router = ray.remote(Router).options(name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                                        max_concurrency=1).remote(token, replicas, replica_args, options)
    ray.get(router.ready.remote())
    return router


def main(argv=None) -> int:
    a = parse_args(argv)
    import ray
    from .batch import connect_ray
    token = service_token(a.token_file)
    connect_ray(a.address)
    try:
        resources = ray.cluster_resources()
        gpus = a.gpus_per_replica if a.gpus_per_replica is not None else (1 if resources.get("GPU") else 0)
        router = start_service(a.engine, replicas=a.replicas, token=token, gpus=gpus, cpus=a.cpus_per_replica,
                               max_streams=a.max_streams, max_push_frames=a.max_push_frames,
                               idle_timeout_s=a.idle_timeout, backend=a.backend, name=a.name)
        where = a.address or ray.get_runtime_context().gcs_address
        print(f"serving {a.engine} on {a.replicas} replica(s) as {a.name!r} in the Ray cluster at {where}; "
              f"clients: runtime.serve.connect({where!r}) or python -m runtime.stream --serve {where} ...; "
              f"token in {a.token_file if not os.environ.get(TOKEN_ENV) else TOKEN_ENV}. Ctrl-C stops.",
              file=sys.stderr, flush=True)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        ray.get(router.shutdown.remote())
        ray.kill(router)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
