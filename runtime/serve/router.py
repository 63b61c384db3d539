"""The router: a named, detached Ray actor that opens streams on replicas and replaces dead ones.

Its calls: ready() -> dict (once every replica has loaded the model: {"replicas": n, **replica info}),
open(token) -> {"id", "replica", "info"} | {"error": "refused" | "busy"}, replica_handles(), shutdown(). It never waits
on a replica longer than CONTROL_TIMEOUT_S: a replica that does not answer in time is passed over.
"""
import hmac
import os
import secrets
import threading
from pathlib import Path

from .common import (CONTROL_TIMEOUT_S, NAMESPACE, ORDER_TIMEOUT_S, PUSH_WINDOW, SERVICE, ServeError, check_token,
                     env_token, read_token_file)
from .replica import actor_class


class Router:
    def __init__(self, token: str, replicas: int, replica_args: tuple, replica_options: dict):
        self.token = check_token(token, "the service token")
        self.replica_args, self.replica_options = replica_args, replica_options
        self.lock = threading.Lock()         # open() runs on several threads: one replaces a dead replica
        self.replicas = [self._start() for _ in range(replicas)]
        self.info = None

    def _start(self):
        return actor_class().options(**self.replica_options).remote(*self.replica_args)

    def _replace(self, dead) -> None:
        """A new replica in the dead one's place (its streams are lost; their clients are told)."""
        with self.lock:
            for i, replica in enumerate(self.replicas):
                if replica is dead:
                    self.replicas[i] = self._start()

    def _allowed(self, token) -> bool:
        # compare_digest takes ASCII strings only; the service token is ASCII (check_token).
        return isinstance(token, str) and token.isascii() and hmac.compare_digest(token, self.token)

    def ready(self) -> dict:
        import ray
        infos = ray.get([r.info.remote() for r in self.replicas])
        self.info = infos[0]
        return {"replicas": len(infos), **self.info}

    def open(self, token) -> dict:
        """A new stream on the least loaded live replica (dead ones are replaced, slow ones passed over)."""
        import ray
        from ray.exceptions import GetTimeoutError
        from ..batch.pool import worker_deaths
        if not self._allowed(token):
            return {"error": "refused"}
        replicas = list(self.replicas)
        asked = [r.load.remote() for r in replicas]
        answered, _ = ray.wait(asked, num_returns=len(asked), timeout=CONTROL_TIMEOUT_S)
        loads = []
        for i, ref in enumerate(asked):
            if ref in answered:
                try:
                    loads.append((ray.get(ref), i))
                except worker_deaths():
                    self._replace(replicas[i])
        for _, i in sorted(loads):
            replica = replicas[i]
            try:
                stream_id = ray.get(replica.open.remote(), timeout=CONTROL_TIMEOUT_S)
            except GetTimeoutError:
                continue
            except worker_deaths():            # died since it answered load()
                self._replace(replica)
                continue
            if stream_id:
                return {"id": stream_id, "replica": replica, "info": self.info}
        return {"error": "busy"}

    def replica_handles(self) -> list:
        """The replicas (a dead one stays until an open() finds it): for operators and tests to ask load()."""
        return list(self.replicas)

    def shutdown(self) -> None:
        import ray
        for replica in self.replicas:
            ray.kill(replica)


def service_token(path: str) -> str:
    """SWIFTVR_SERVE_TOKEN, else the token file at `path`, made (mode 0600) if there is none."""
    token = env_token()
    if token is not None:
        return token
    path = Path(path)
    if os.path.lexists(path):
        return read_token_file(path)
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise ServeError(f"cannot write the service token to {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def start_service(engine: str, *, replicas: int = 1, token: str, gpus: float = 0, cpus: float = 1,
                  max_streams: int = 4, max_push_frames=None, idle_timeout_s=600.0, order_timeout_s=ORDER_TIMEOUT_S,
                  backend=None, name=SERVICE):
    """Start the router and its replicas in the Ray cluster this process is in; returns the router
    once every replica has loaded the model. order_timeout_s: how long a push waits for the pushes
    before it (see replica.py)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    check_token(token, "token")
    threads = max(1, int(cpus)) if not gpus else None
    replica_args = (str(Path(engine).absolute()), backend, None, threads, max_streams, max_push_frames,
                    idle_timeout_s, order_timeout_s)
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_concurrency": max_streams * PUSH_WINDOW}
    try:
        # Threads: opens run side by side, so that a slow replica holds up only the opens asking it.
        router = ray.remote(Router).options(name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                                            max_concurrency=8).remote(token, replicas, replica_args, options)
    except ValueError:
        raise ServeError(f"a service named {name!r} already runs in this cluster: stop it, or pass --name") from None
    try:
        ray.get(router.ready.remote())
    except (RayActorError, RayTaskError) as e:
        ray.kill(router)
        cause = str(getattr(e, "cause", None) or e).strip().splitlines()
        raise ServeError(f"the replicas could not load {engine}: {cause[-1] if cause else e}") from None
    return router
