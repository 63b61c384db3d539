"""The driver: a pool of RestoreWorker actors, a queue of files, retries after a worker dies."""
import os
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


class BatchRun:
    """Drives the pool: a queue of files, one at a time per worker, retries after a worker dies.
    `slots` is public so that callers (and tests) can see which worker holds which file."""

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

    def start_worker(self) -> WorkerSlot:
        import ray
        remote = ray.remote(RestoreWorker).options(num_cpus=self.cpus, num_gpus=self.gpus, max_concurrency=2)
        return WorkerSlot(remote.remote(*self.worker_args))

    def run(self) -> list[FileResult]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError
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
        # Workers whose model failed to load are not retried: every one would fail the same way.
        for slot in self.slots:
            try:
                hello = ray.get(slot.actor.hello.remote())
            except (RayActorError, RayTaskError) as e:
                self.shutdown()
                raise RuntimeSetupError(f"a worker could not load {self.engine}: {_cause(e)}") from None
            slot.pid, slot.name = hello["pid"], hello["name"]
        self.ready_seconds = time.perf_counter() - start     # loading the workers' models
        try:
            while todo or any(s.job for s in self.slots):
                if not self.slots:              # every replacement failed to start
                    for job in todo:
                        self.results.append(FileResult(job.source, job.target, "failed", "no worker left (see "
                                                       "the events)", attempts=job.attempts))
                    break
                for slot in self.slots:
                    if slot.job is None and todo:
                        slot.job, slot.frames = todo.popleft(), 0
                        slot.job.attempts += 1
                        slot.ref = slot.actor.restore.remote(slot.job.source, slot.job.target)
                refs = [s.ref for s in self.slots if s.job]
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
                for slot in [s for s in self.slots if s.job and s.ref in ready]:
                    job, slot.job = slot.job, None
                    frames_bar.update(-slot.frames)      # counted again from the result below
                    try:
                        done = ray.get(slot.ref)
                    except RayActorError:
                        if self._worker_died(slot, job, todo):      # given up: reported failed
                            files_bar.update(1)
                        continue
                    except RayTaskError as e:            # a bug in a worker, not a dead worker
                        done = {"error": f"worker error: {_cause(e)}", "worker": slot.name}
                    if "error" in done:
                        self.results.append(FileResult(job.source, job.target, "failed", done["error"],
                                                       attempts=job.attempts, worker=done["worker"]))
                    else:
                        frames_bar.update(done["frames"])
                        self.results.append(FileResult(job.source, job.target, "ok", "; ".join(job.deaths),
                                                       done["frames"], done["seconds"], job.attempts, done["worker"]))
                    files_bar.update(1)
                self._poll_frames(frames_bar)
        finally:
            files_bar.close()
            frames_bar.close()
            self.shutdown()
        self.seconds = time.perf_counter() - start
        order = {job.source: i for i, job in enumerate(self.jobs)}
        self.results.sort(key=lambda r: order[r.source])
        return self.results

    def _worker_died(self, slot: WorkerSlot, job: FileJob, todo: deque) -> bool:
        """Clean up after a worker that died on `job`, queue the job again (or give up on it: True),
        and put a new worker in the slot."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError
        removed = remove_temporaries(job.target, slot.pid)
        note = f"worker {slot.name} died at frame {slot.frames}" + (" (its partial output removed)" if removed else "")
        job.deaths.append(note)
        self.events.append(f"{Path(job.source).name}: {note}")
        gave_up = job.attempts > self.retries
        if gave_up:
            self.results.append(FileResult(job.source, job.target, "failed",
                                           f"{job.attempts} workers died on it: " + "; ".join(job.deaths),
                                           attempts=job.attempts))
        else:
            todo.appendleft(job)            # next free worker; the dead one is being replaced
        slot.actor, slot.ref = self.start_worker().actor, None
        try:
            hello = ray.get(slot.actor.hello.remote())
        except (RayActorError, RayTaskError) as e:
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


def connect_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Join a cluster (address "auto" or "ray://host:10001"), or start a private local one with no
    dashboard, jobs API or Ray Client server. Ray's own gRPC ports still listen on every interface
    (Ray offers no localhost-only switch): firewall them (README, "Scale out on Ray")."""
    import ray
    if ray.is_initialized():
        return False          # the caller's own cluster: not ours to shut down
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return True
