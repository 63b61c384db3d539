"""The driver: a pool of RestoreWorker actors, a queue of files, retries after a worker dies."""
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from ..errors import RuntimeSetupError
from .jobs import FileJob, FileResult, remove_temporaries
from .worker import RestoreWorker


@dataclass
class WorkerSlot:
    actor: object
    pid: int | None = None
    name: str = ""
    job: FileJob | None = None
    ref: object = None           # the ObjectRef of the restore in progress
    frames: int = 0              # frames of the current file written so far (polled)


def worker_deaths() -> tuple:
    """What ray.get raises when the worker (actor) running a call died, or its node did: the call
    may well succeed on another worker. RayActorError: the actor process exited or was killed;
    OutOfMemoryError: Ray's memory monitor killed it; WorkerCrashedError, NodeDiedError; ObjectLostError:
    the result died with its node."""
    from ray.exceptions import NodeDiedError, ObjectLostError, OutOfMemoryError, RayActorError, WorkerCrashedError
    return RayActorError, OutOfMemoryError, WorkerCrashedError, NodeDiedError, ObjectLostError


class BatchRun:
    """Drives the pool: a queue of files, one at a time per worker, retries after a worker dies.
    `slots` is public so that callers (and tests) can see which worker holds which file.
    stop(why) (from a signal handler or another thread) ends run() soon: the files in progress are
    abandoned (their workers killed, their temporaries removed) and reported "stopped", as are the
    files not started."""

    def __init__(self, engine: str, jobs: list[FileJob], *, workers: int, gpus_per_worker: float = 0,
                 cpus_per_worker: float = 1, retries: int = 2, backend=None, options=None, write_delay=0.0,
                 progress: bool | None = None):
        self.engine, self.jobs, self.retries = str(Path(engine).absolute()), jobs, retries
        self.gpus, self.cpus = gpus_per_worker, cpus_per_worker
        # ONNX Runtime on the CPU: as many threads as the cores Ray gave the actor, not all the node's.
        threads = max(1, int(cpus_per_worker)) if not gpus_per_worker else None
        self.worker_args = (self.engine, backend, None, threads, options or {}, write_delay)
        self.workers, self.progress = workers, progress
        self.slots: list[WorkerSlot] = []
        self.results: list[FileResult] = []
        self.events: list[str] = []      # what happened (deaths, retries), for the summary
        self.seconds = self.ready_seconds = 0.0
        self.stopped = ""                # why run() stopped early ("SIGTERM"), once stop() was called
        self._stop = threading.Event()

    def stop(self, why: str) -> None:
        self.stopped = self.stopped or why
        self._stop.set()

    def start_worker(self) -> WorkerSlot:
        import ray
        remote = ray.remote(RestoreWorker).options(num_cpus=self.cpus, num_gpus=self.gpus, max_concurrency=2)
        return WorkerSlot(remote.remote(*self.worker_args))

    def run(self) -> list[FileResult]:
        import ray
        from ray.exceptions import RayError
        from tqdm import tqdm

        start = time.perf_counter()
        todo = deque()
        for job in self.jobs:
            remove_temporaries(job.target)       # left by an earlier, killed batch
            if os.path.exists(job.target):
                self.results.append(FileResult(job.source, job.target, "skipped", "output exists"))
            else:
                todo.append(job)
        disable = None if self.progress is None else not self.progress
        files_bar = tqdm(total=len(self.jobs), initial=len(self.results), unit="file", desc="files", position=0,
                         disable=disable, dynamic_ncols=True)
        frames_bar = tqdm(unit="frame", desc="frames", position=1, disable=disable, dynamic_ncols=True)
        self.slots = [self.start_worker() for _ in range(min(self.workers, len(todo)))]
        try:
            # Workers whose model failed to load are not retried: every one would fail the same way.
            hellos = [slot.actor.hello.remote() for slot in self.slots]
            loading = hellos
            while loading and not self._stop.is_set():
                _, loading = ray.wait(loading, num_returns=len(loading), timeout=0.5)
            if not self._stop.is_set():
                for slot, hello in zip(self.slots, hellos):
                    try:
                        hello = ray.get(hello)
                    except RayError as e:
                        raise RuntimeSetupError(f"a worker could not load {self.engine}: {_cause(e)}") from None
                    slot.pid, slot.name = hello["pid"], hello["name"]
            self.ready_seconds = time.perf_counter() - start     # loading the workers' models
            while (todo or any(s.job for s in self.slots)) and not self._stop.is_set():
                if not self.slots:              # every replacement failed to start
                    for job in todo:
                        self.results.append(FileResult(job.source, job.target, "failed", "no worker left (see "
                                                       "the events)", attempts=job.attempts))
                    todo.clear()
                    break
                for slot in self.slots:
                    if slot.job is None and todo:
                        slot.job, slot.frames = todo.popleft(), 0
                        slot.job.attempts += 1
                        slot.ref = slot.actor.restore.remote(slot.job.source, slot.job.target)
                refs = [s.ref for s in self.slots if s.job]
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
                for slot in [s for s in self.slots if s.job and s.ref in ready]:
                    frames_bar.update(-slot.frames)      # counted again from the result below
                    result = self._collect(slot, todo)
                    if result:
                        frames_bar.update(result.frames)
                        files_bar.update(1)
                self._poll_frames(frames_bar)
            if self._stop.is_set():
                self._abandon(todo)
        finally:
            files_bar.close()
            frames_bar.close()
            self.shutdown()
        self.seconds = time.perf_counter() - start
        order = {job.source: i for i, job in enumerate(self.jobs)}
        self.results.sort(key=lambda r: order[r.source])
        return self.results

    def _collect(self, slot: WorkerSlot, todo: deque) -> FileResult | None:
        """The finished restore call of `slot`: its result (also in self.results), or None when its
        worker died and the file was queued again."""
        import ray
        from ray.exceptions import RayError
        job, slot.job = slot.job, None
        try:
            done = ray.get(slot.ref)
        except worker_deaths() as e:
            if not self._worker_died(slot, job, todo, e):
                return None
            return self.results[-1]                 # given up: reported failed
        except RayError as e:                        # a bug in a worker, not a dead worker
            done = {"error": f"worker error: {_cause(e)}", "worker": slot.name}
        if "error" in done:
            result = FileResult(job.source, job.target, "failed", done["error"], attempts=job.attempts,
                                worker=done["worker"])
        else:
            result = FileResult(job.source, job.target, "ok", "; ".join(job.deaths), done["frames"], done["seconds"],
                                job.attempts, done["worker"])
        self.results.append(result)
        return result

    def _abandon(self, todo: deque) -> None:
        """After stop(): kill the workers in the middle of a file, remove what they were writing, and
        report those files and the ones not started as stopped (a file finished meanwhile is kept)."""
        import ray
        busy = [s for s in self.slots if s.job]
        for slot in busy:
            ray.kill(slot.actor)
        if busy:
            ray.wait([s.ref for s in busy], num_returns=len(busy), timeout=30)     # until they are dead
        abandoned = 0
        for slot in busy:
            try:
                ray.get(slot.ref, timeout=0)
                self._collect(slot, todo)        # it finished before the kill
                continue
            except Exception:
                pass
            remove_temporaries(slot.job.target, slot.pid)
            abandoned += 1
            self.results.append(FileResult(slot.job.source, slot.job.target, "stopped",
                                           f"stopped ({self.stopped}) at frame {slot.frames}",
                                           attempts=slot.job.attempts))
        self.results += [FileResult(job.source, job.target, "stopped", f"not started ({self.stopped})")
                         for job in todo]
        self.events.append(f"stopped by {self.stopped}: {abandoned} file(s) abandoned, {len(todo)} not started")
        todo.clear()

    def _worker_died(self, slot: WorkerSlot, job: FileJob, todo: deque, error) -> bool:
        """Clean up after a worker that died on `job`, queue the job again (or give up on it: True),
        and put a new worker in the slot."""
        import ray
        from ray.exceptions import RayError
        ray.kill(slot.actor)             # dead already, or dying (a crashed task, an OOM kill of its process)
        removed = remove_temporaries(job.target, slot.pid)
        note = (f"worker {slot.name} died at frame {slot.frames}" + (" (its partial output removed)" if removed else "")
                + f": {type(error).__name__}")
        job.deaths.append(note)
        self.events.append(f"{Path(job.source).name}: {note}")
        gave_up = job.attempts > self.retries
        if gave_up:
            self.results.append(FileResult(job.source, job.target, "failed",
                                           f"{job.attempts} workers died on it: " + "; ".join(job.deaths),
                                           attempts=job.attempts))
        else:
            todo.appendleft(job)            # next free worker; the dead one is being replaced
        if self._stop.is_set():
            return gave_up
        slot.actor, slot.ref = self.start_worker().actor, None
        try:
            hello = ray.get(slot.actor.hello.remote())
        except RayError as e:
            self.events.append(f"a replacement worker could not start: {_cause(e)}")
            self.slots.remove(slot)
            return gave_up
        slot.pid, slot.name = hello["pid"], hello["name"]
        return gave_up

    def _poll_frames(self, frames_bar) -> None:
        import ray
        busy = [s for s in self.slots if s.job]
        refs = [s.actor.progress.remote() for s in busy]
        for slot, ref in zip(busy, refs):
            try:
                frames = ray.get(ref, timeout=5)
            except Exception:          # a dying worker: its restore call will say so
                continue
            frames_bar.update(frames - slot.frames)
            slot.frames = frames

    def shutdown(self) -> None:
        import ray
        for slot in self.slots:
            ray.kill(slot.actor)
        self.slots = []


def _cause(error) -> str:
    cause = getattr(error, "cause", None) or error
    return str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__


RAY_TOKEN_FILE = Path.home() / ".ray" / "auth_token"


def send_ray_token() -> None:
    """Have this process send Ray's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)
    to the cluster it joins. Ray 2.60 sends it only with RAY_AUTH_MODE=token exported, or to a cluster
    it finds itself (address "auto" on the cluster's machine): a client given an address (the one
    runtime.serve prints, "10.0.0.1:6379") from a fresh shell got InvalidAuthToken for 20 s, then
    "Failed to connect". A cluster without token auth ignores the token (checked with Ray 2.60)."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or RAY_TOKEN_FILE.is_file():
        try:
            # What ray.init("auto") itself calls: sets RAY_AUTH_MODE=token and reloads Ray's config,
            # which it read when ray was imported (setting the variable alone is too late).
            from ray._private.authentication.authentication_token_setup import _enable_token_auth
        except ImportError:           # a Ray without token authentication (< 2.52): nothing to send
            return
        _enable_token_auth()


def keep_ray_token_private() -> None:
    """Ray writes ~/.ray/auth_token as the umask leaves it (0644: every local user could read the key to
    the cluster). Made 0600, and said so."""
    try:
        info = RAY_TOKEN_FILE.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            RAY_TOKEN_FILE.chmod(0o600)
            print(f"note: {RAY_TOKEN_FILE} (Ray's token) was readable by other users (mode "
                  f"{info.st_mode & 0o777:04o}); made it 0600", file=sys.stderr)
    except OSError:
        pass


def join_ray(address: str | None, **init) -> None:
    """ray.init(address) with Ray's token sent (send_ray_token), and a one-line error when it fails."""
    import ray
    from ray.exceptions import RayError
    send_ray_token()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        ray.init(address=address, log_to_driver=False, **init)
    except (ConnectionError, RayError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise RuntimeSetupError(f"could not join {where}: {str(e).strip().splitlines()[0]}. A cluster with token "
                                f"authentication (Ray's default) needs its token on this machine: "
                                f"{RAY_TOKEN_FILE} (mode 600) or RAY_AUTH_TOKEN") from None
    keep_ray_token_private()


def connect_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join a cluster (address "auto" or "ray://host:10001"), or start a private local one with no
    dashboard, jobs API or Ray Client server. Ray's own gRPC ports still listen on every interface
    (Ray offers no localhost-only switch): firewall them (README, "Scale out on Ray")."""
    import ray
    if ray.is_initialized():
        return False          # the caller's own cluster: not ours to shut down
    if address:
        join_ray(address)
    else:
        join_ray(None, num_cpus=num_cpus, include_dashboard=False)
    return True
