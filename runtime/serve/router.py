"""The router: a named, detached Ray actor that opens streams on replicas and replaces dead ones."""
import hmac
import os
import secrets
from pathlib import Path

from .common import NAMESPACE, SERVICE, TOKEN_ENV, ServeError
from .replica import StreamReplica

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
            try:
                stream_id = ray.get(self.replicas[i].open.remote())
            except RayActorError:                    # died since it answered load()
                self.replicas[i] = self._start()
                continue
            if stream_id:
                return {"id": stream_id, "replica": self.replicas[i], "info": self.info}
        return {"error": "busy"}

    def shutdown(self) -> None:
        import ray
        for replica in self.replicas:
            ray.kill(replica)


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
    from ray.exceptions import RayActorError, RayTaskError
    try:
        router = ray.remote(Router).options(name=name, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
                                            max_concurrency=1).remote(token, replicas, replica_args, options)
    except ValueError:
        raise ServeError(f"a service named {name!r} already runs in this cluster: stop it, or pass --name") from None
    try:
        ray.get(router.ready.remote())
    except (RayActorError, RayTaskError) as e:
        ray.kill(router)
        cause = str(getattr(e, "cause", None) or e).strip().splitlines()
        raise ServeError(f"the replicas could not load {engine}: {cause[-1] if cause else e}") from None
    return router
