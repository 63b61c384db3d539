"""runtime.batch and runtime.serve on a local Ray cluster (2 CPUs, no dashboard, 200 MB object store).

One cluster for the whole module (Ray starts slowly on 2 cores), so every test here runs in one
pytest-xdist worker (`--dist loadscope` in the Makefile: a file per worker). Workers restore with
one ONNX Runtime thread each; the references do too, so outputs are compared exactly, as FFV1
(lossless): libx264's bitstream is not bound to be the same in two processes (README).
Tests without `cluster` need no Ray cluster: the replica's bookkeeping is tested in this process.
"""
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_runtime import PY, REPO, SIZE, cpu_bundle, decoded_frames, make_clip, moving_frames  # noqa: F401
from test_runtime import audio_payloads, video_stream_facts
from test_stream import frame_times

ray = pytest.importorskip("ray")
TOKEN = "test-token-" + "x" * 20


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 ** 2, log_to_driver=False)
    yield
    ray.shutdown()


def hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def stream_cli(bundle, source, target):
    """runtime.stream in this process (one ONNX Runtime thread, as a batch worker with 1 CPU), FFV1."""
    from runtime import stream
    assert stream.main(["--engine", str(bundle), "--threads", "1", "--codec", "ffv1", str(source),
                        "-o", str(target)]) == 0


def test_batch_equals_stream_retries_a_killed_worker_fails_a_bad_file_and_resumes(cluster, cpu_bundle, tmp_path):
    from runtime.batch import BatchRun, find_inputs, plan_jobs
    inputs, out = tmp_path / "in", tmp_path / "out"
    (inputs / "sub").mkdir(parents=True)
    names = [f"clip{i}.mkv" if i < 4 else f"sub/clip{i}.mkv" for i in range(6)]
    for i, name in enumerate(names):
        make_clip(inputs / name, moving_frames(13 + i, *SIZE, seed=i))
    whole = (inputs / names[0]).read_bytes()
    (inputs / "cut.mkv").write_bytes(whole[:len(whole) // 2])      # damaged: ends mid-stream
    jobs = plan_jobs(find_inputs([str(inputs)], None), str(out), None)
    assert len(jobs) == 7

    # Each written batch sleeps 0.4 s (test hook), so a file takes > 0.8 s: time to kill its worker.
    run = BatchRun(str(cpu_bundle), jobs, workers=2, retries=2, write_delay=0.4, progress=False,
                   options={"codec": "ffv1"})
    done, killed = [], []
    thread = threading.Thread(target=lambda: done.append(run.run()))
    thread.start()
    deadline = time.monotonic() + 60
    while not killed and time.monotonic() < deadline and thread.is_alive():
        for slot in list(run.slots):
            if slot.job and slot.pid and Path(slot.job.source).name.startswith("clip") and \
                    ray.get(slot.actor.progress.remote()) > 0:
                killed.append((slot.job.source, slot.pid))
                ray.kill(slot.actor)
                break
        time.sleep(0.05)
    thread.join(90)
    assert killed and done, "no worker was caught in the middle of a file"
    results = {Path(r.source).name: r for r in done[0]}
    assert results["cut.mkv"].status == "failed" and "truncated" in results["cut.mkv"].reason
    victim = results[Path(killed[0][0]).name]
    assert victim.status == "ok" and victim.attempts == 2 and f"worker {killed[0][1]}@" in victim.reason
    assert "partial output removed" in victim.reason and any("died" in e for e in run.events)
    assert all(results[Path(n).name].status == "ok" for n in names)
    assert hidden(out) == [] and not (out / "cut.mkv").exists()

    for i, name in enumerate(names):
        expected = tmp_path / "expected" / name
        expected.parent.mkdir(parents=True, exist_ok=True)
        stream_cli(cpu_bundle, inputs / name, expected)
        got = out / name
        np.testing.assert_array_equal(decoded_frames(got), decoded_frames(expected))
        assert frame_times(got) == frame_times(expected)
        assert video_stream_facts(got) == video_stream_facts(expected)
        assert audio_payloads(got) == audio_payloads(expected) != []

    again = BatchRun(str(cpu_bundle), plan_jobs(find_inputs([str(inputs)], None), str(out), None), workers=2,
                     progress=False)
    statuses = {Path(r.source).name: r.status for r in again.run()}
    assert statuses == {**{Path(n).name: "skipped" for n in names}, "cut.mkv": "failed"}


def test_batch_cli_writes_the_summary_and_report(cluster, cpu_bundle, tmp_path):
    import json
    from runtime.batch.cli import main
    make_clip(tmp_path / "a.mkv", moving_frames(9, *SIZE), audio=False)
    (tmp_path / "bad.mkv").write_text("not a video")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two files\n{tmp_path / 'a.mkv'}\n{tmp_path / 'bad.mkv'}\n")
    code = main(["--engine", str(cpu_bundle), "--input-list", str(listing), "--out", str(tmp_path / "out"),
                       "--workers", "1", "--ext", "mp4", "--no-progress"])
    assert code == 1                                   # one file failed
    report = json.loads((tmp_path / "out" / "batch-report.json").read_text())
    assert report["counts"] == {"ok": 1, "failed": 1, "skipped": 0, "stopped": 0}
    assert video_stream_facts(tmp_path / "out" / "a.mp4")["frames"] == 9


def test_batch_cli_refuses_shared_outputs_and_a_bad_out_and_leaves_out_its_own_outputs(tmp_path, capsys):
    """All before Ray starts (parse_args), each with a one-line error and exit status 2."""
    from runtime.batch.cli import parse_args
    engine = ["--engine", str(tmp_path / "unused.plan"), "--no-progress"]

    def refused(argv) -> str:
        with pytest.raises(SystemExit) as stop:
            parse_args(argv + engine)
        assert stop.value.code == 2
        return capsys.readouterr().err

    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("a.mp4", "a.mkv", "b.mkv"):
        (shared / name).write_bytes(b"")
    out = tmp_path / "out"
    assert (f"{shared / 'a.mkv'} and {shared / 'a.mp4'} would both be written to {out / 'a.mkv'}"
            in refused([str(shared), "--out", str(out), "--ext", ".mkv"]))
    assert "would replace the input" in refused([str(shared / "b.mkv"), "--out", str(shared)])
    (tmp_path / "file").write_text("")
    assert "cannot make this folder (Not a directory)" in refused([str(shared), "--out", str(tmp_path / "file" / "o")])

    # A re-run with --out inside the input folder: its earlier outputs are not inputs; a link loop is said.
    inputs = tmp_path / "in"
    (inputs / "restored").mkdir(parents=True)
    for name in ("c.mkv", "restored/c.mkv"):
        (inputs / name).write_bytes(b"")
    (inputs / "loop.mkv").symlink_to(inputs / "loop.mkv")
    a = parse_args([str(inputs), "--out", str(inputs / "restored")] + engine)
    assert a.sources == [str(inputs / "c.mkv")] and [job.target for job in a.jobs] == [str(inputs / "restored" / "c.mkv")]
    assert a.skipped_inputs == [f"{inputs / 'loop.mkv'}: a symbolic link loop"]


def test_a_worker_lost_to_ray_oom_a_crash_or_its_node_is_a_worker_death(cluster, cpu_bundle, tmp_path, monkeypatch):
    """Ray's memory monitor, a crashed worker process and a lost node come back from ray.get as
    OutOfMemoryError, WorkerCrashedError and NodeDiedError, not RayActorError: each is a worker
    death (the file goes to a new worker), not the end of the batch. Raised here in place of the
    first three results: a real OOM kill needs gigabytes and minutes."""
    from ray.exceptions import NodeDiedError, OutOfMemoryError, WorkerCrashedError
    from runtime.batch import BatchRun, find_inputs, plan_jobs
    (tmp_path / "in").mkdir()
    make_clip(tmp_path / "in" / "a.mkv", moving_frames(9, *SIZE), audio=False)
    deaths = [OutOfMemoryError("Task was killed due to the node running low on memory."), WorkerCrashedError(),
              NodeDiedError("the node running this task died")]
    run = BatchRun(str(cpu_bundle), plan_jobs(find_inputs([str(tmp_path / "in")], None), str(tmp_path / "out"), None),
                   workers=1, retries=3, progress=False)
    real_get = ray.get

    def get(refs, *args, **kwargs):
        if deaths and any(refs is slot.ref for slot in run.slots):
            raise deaths.pop(0)
        return real_get(refs, *args, **kwargs)
    monkeypatch.setattr(ray, "get", get)
    [result] = run.run()
    assert result.status == "ok" and result.attempts == 4, result
    assert re.findall(r"died at frame \d+: (\w+)", result.reason) == ["OutOfMemoryError", "WorkerCrashedError",
                                                                  "NodeDiedError"], result.reason
    assert video_stream_facts(tmp_path / "out" / "a.mkv")["frames"] == 9 and hidden(tmp_path / "out") == []


def fresh_env() -> dict:
    """As from a fresh shell: not the RAY_AUTH_MODE=token that ray.init() exported into this process
    (Ray's token itself is in ~/.ray/auth_token, where the test cluster left it)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "PYTHONPATH": str(REPO)}


def test_batch_cli_stops_on_sigterm_with_its_summary_and_report_and_nothing_partial(cluster, cpu_bundle, tmp_path):
    """In its own process (ray.init() installs Ray's own SIGTERM handler: exit 1, no report), joined
    to this module's cluster by its address."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(3):                 # 240 frames: seconds of work each, time to be stopped in the first
        make_clip(inputs / f"c{i}.mkv", moving_frames(240, *SIZE, seed=i), audio=False)
    (inputs / "loop").symlink_to(inputs / "loop")
    batch = subprocess.Popen([PY, "-m", "runtime.batch", "--engine", str(cpu_bundle), str(inputs), "--out", str(out),
                              "--workers", "1", "--address", ray.get_runtime_context().gcs_address, "--codec", "ffv1",
                              "--no-progress"], cwd=REPO, env=fresh_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not list(out.glob(".*.batch-*")) and batch.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    batch.send_signal(signal.SIGTERM)                  # while the first file is written
    summary = batch.communicate(timeout=90)[1]
    assert batch.returncode == 128 + signal.SIGTERM, summary[-2000:]
    report = json.loads((out / "batch-report.json").read_text())
    assert report["stopped"] == "SIGTERM" and report["counts"]["stopped"] == 3
    assert [f["reason"].split(" at ")[0] for f in report["files"]] == ["stopped (SIGTERM)"] + ["not started (SIGTERM)"] * 2
    assert report["inputs_left_out"] == [f"{inputs / 'loop'}: a symbolic link loop"]
    assert hidden(out) == [] and sorted(p.name for p in out.iterdir()) == ["batch-report.json"]
    assert "0 ok, 0 failed, 0 skipped, 3 stopped" in summary and "left out:" in summary


# ---- runtime.serve ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(cluster, cpu_bundle):
    from runtime import serve
    router = serve.start_service(str(cpu_bundle), replicas=2, token=TOKEN, max_streams=2, order_timeout_s=20)
    yield router
    ray.get(router.shutdown.remote())
    ray.kill(router)


def kill_and_wait(actor, seconds: float = 30) -> None:
    """ray.kill returns before the actor's process is gone: until it is, a call may still be answered
    by the dying actor. Wait until calls fail."""
    ray.kill(actor)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            ray.get(actor.load.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the killed actor still answers after {seconds} s")


def run_alone(client, frames):
    with client.open() as stream:
        return np.concatenate([stream.push(frames), stream.flush()])


def test_concurrent_streams_equal_each_alone_and_a_dead_replica_loses_only_its_streams(service):
    from runtime import serve
    client = serve.connect(None, token=TOKEN)
    clips = [moving_frames(11 + 3 * i, *SIZE, seed=10 + i) for i in range(4)]
    alone = [run_alone(client, clip) for clip in clips]

    streams = [client.open() for _ in clips]
    with pytest.raises(serve.Busy, match="busy"):              # 2 replicas x 2 streams
        client.open()
    assert len({s.id for s in streams}) == 4 and len({s.replica for s in streams}) == 2
    outs, at = [[] for _ in clips], [0] * 4
    sizes = (5, 1, 7, 3, 2)
    for step in range(12):                                      # interleaved pushes of uneven sizes
        for i, (stream, clip) in enumerate(zip(streams, clips)):
            n = sizes[(step + i) % len(sizes)]
            if at[i] < len(clip):
                piece = clip[at[i]:at[i] + n]
                outs[i].append(stream.push(piece))
                at[i] += len(piece)
    assert at == [len(c) for c in clips]
    for i, stream in enumerate(streams):
        outs[i].append(stream.flush())
        np.testing.assert_array_equal(np.concatenate(outs[i]), alone[i])

    live = [client.open() for _ in range(4)]
    for stream in live:
        stream.push(clips[0][:4])
    doomed = live[0].replica
    kill_and_wait(doomed)
    for stream in live:
        if stream.replica == doomed:
            with pytest.raises(serve.StreamLost, match="state .* is gone"):
                stream.push(clips[0][4:8])
        else:
            out = np.concatenate([stream.push(clips[0][4:]), stream.flush()])
            np.testing.assert_array_equal(out, alone[0])
    np.testing.assert_array_equal(run_alone(client, clips[1]), alone[1])    # the dead replica was replaced


def test_wrong_token_or_stream_id_is_refused_and_a_bad_push_leaves_the_stream_going(service):
    from runtime import serve
    with pytest.raises(serve.Refused, match="^refused$"):
        serve.Client(service, "wrong-token").open()
    with pytest.raises(serve.Refused, match="^refused$"):
        serve.Client(service, "\udc80" * 30).open()                   # not even encodable
    assert ray.get(service.open.remote(None)) == ray.get(service.open.remote(["x"])) == {"error": "refused"}
    client = serve.connect(None, token=TOKEN)
    frames = moving_frames(12, *SIZE, seed=3)
    expected = run_alone(client, frames)
    with client.open() as stream:
        stranger = serve.Stream("x" * 22, stream.replica, stream.info)     # a guessed id, the right replica
        with pytest.raises(serve.Refused, match="^refused$"):
            stranger.push(frames[:2])
        out = [stream.push(frames[:5])]
        with pytest.raises(serve.BadPush, match="the model takes 17x16"):  # checked by the client
            stream.push(np.zeros((2, 32, 34, 3), np.uint8))
        # A client that skips the check: the replica refuses it before anything is queued.
        answer = ray.get(stream.replica.push.remote(stream.id, stream._next(), np.zeros((2, 33, 17, 3), np.uint8)))
        assert answer == {"error": "bad", "message": "frames are 17x33, the model takes 17x16"}
        too_many = np.zeros((stream.info["max_push_frames"] + 1, 16, 17, 3), np.uint8)
        answer = ray.get(stream.replica.push.remote(stream.id, stream._next(), too_many))
        assert answer["error"] == "bad" and "a push holds 1.." in answer["message"]
        answer = ray.get(stream.replica.push.remote(stream.id, str(stream.seq), frames[:2]))
        assert answer == {"error": "invalid", "message": "seq must be an int, got str"}
        out += [stream.push(frames[5:]), stream.flush()]
    np.testing.assert_array_equal(np.concatenate(out), expected)


def test_stream_cli_through_the_service_from_another_process(service, cpu_bundle, tmp_path):
    source, local, served = tmp_path / "in.mkv", tmp_path / "local.mkv", tmp_path / "served.mkv"
    make_clip(source, moving_frames(14, *SIZE, seed=7))
    env = {**fresh_env(), "SWIFTVR_SERVE_TOKEN": TOKEN}          # Ray's token sent without RAY_AUTH_MODE
    # The test cluster's own address, as runtime.serve prints it: "auto" means "the newest cluster on this
    # machine", which another cluster started meanwhile (a batch CLI run, a parallel test worker) can replace.
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run([PY, "-m", "runtime.stream", "--serve", address, "--codec", "ffv1", str(source),
                           "-o", str(served)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "served by Ray replica" in done.stderr and "InvalidAuthToken" not in done.stderr
    done = subprocess.run([PY, "-m", "runtime.stream", "--engine", str(cpu_bundle), "--threads", "1", "--codec", "ffv1",
                           str(source), "-o", str(local)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(decoded_frames(served), decoded_frames(local))
    assert frame_times(served) == frame_times(local) and audio_payloads(served) == audio_payloads(local)


def test_service_token_file_is_private_and_read_back(tmp_path, monkeypatch):
    from runtime.serve import ServeError, client, router, start_service
    monkeypatch.delenv("SWIFTVR_SERVE_TOKEN", raising=False)
    path = tmp_path / "conf" / "serve.token"
    token = router.service_token(str(path))
    assert len(token) >= 40 and path.stat().st_mode & 0o777 == 0o600
    assert router.service_token(str(path)) == token                     # kept across restarts
    monkeypatch.setattr(client, "DEFAULT_TOKEN_FILE", path)
    assert client.read_token() == token
    monkeypatch.setenv("SWIFTVR_SERVE_TOKEN", "from-env-" + "e" * 16)
    assert client.read_token() == "from-env-" + "e" * 16 and client.read_token("given-" + "g" * 16) == "given-" + "g" * 16

    # Refused, each with a one-line reason: an empty or short token would open the service to guessing.
    for value in ("", "short"):
        monkeypatch.setenv("SWIFTVR_SERVE_TOKEN", value)
        with pytest.raises(ServeError, match=rf"^SWIFTVR_SERVE_TOKEN: a service token is at least 16 .*\(got {len(value)} characters\)$"):
            router.service_token(str(path))
    monkeypatch.delenv("SWIFTVR_SERVE_TOKEN")
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ServeError, match="got 0 characters"):
        router.service_token(str(empty))
    shared = tmp_path / "shared.token"
    shared.write_text(token)
    shared.chmod(0o644)                                   # as Ray writes ~/.ray/auth_token
    with pytest.raises(ServeError, match=f"other users \\(mode 0644\\): chmod 600 {shared}$"):
        router.service_token(str(shared))
    monkeypatch.setattr(client, "DEFAULT_TOKEN_FILE", shared)
    with pytest.raises(ServeError, match="chmod 600"):
        client.read_token()
    for name, target in (("dangling.token", "nowhere"), ("loop.token", "loop.token")):
        (tmp_path / name).symlink_to(tmp_path / target)
        with pytest.raises(ServeError, match="is a symbolic link to nothing"):
            router.service_token(str(tmp_path / name))
    with pytest.raises(ServeError, match="got 0 characters"):               # before Ray is asked for anything
        start_service(str(tmp_path / "unused.plan"), token="")


# ---- the replica's bookkeeping, in this process (no cluster) -----------------------------------------

class SlowSession:
    """A Session whose pushes take `seconds` longer: a push that outlasts the idle timeout."""

    def __init__(self, session, seconds):
        self.session, self.seconds = session, seconds

    def push(self, frames):
        time.sleep(self.seconds)
        return self.session.push(frames)

    def __getattr__(self, name):
        return getattr(self.session, name)


def answer_within(seconds, call, *args):
    """call(*args)'s answer, or a failure when it takes longer (a call that should wait for nothing)."""
    answer = []
    thread = threading.Thread(target=lambda: answer.append(call(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert answer, f"{call.__name__}{args[:2]} did not answer in {seconds} s"
    return answer[0]


def test_replica_closes_idle_streams_on_a_timer_but_never_one_in_a_push(cpu_bundle):
    from runtime.serve.replica import StreamReplica
    replica = StreamReplica(str(cpu_bundle), threads=1, max_streams=2, idle_timeout_s=0.4)
    frames = moving_frames(8, *SIZE)
    busy = replica.open()
    replica.streams[busy].session = SlowSession(replica.streams[busy].session, 1.2)
    answers = []
    pushing = threading.Thread(target=lambda: answers.append(replica.push(busy, 0, frames)))
    pushing.start()
    time.sleep(0.8)                   # the push has run for twice the idle timeout
    replica.open()                    # (where idle streams used to be closed, the busy one too)
    pushing.join(10)
    assert answers and "frames" in answers[0], answers
    # Nobody touches either stream now, nobody opens one: the timer closes both.
    deadline = time.monotonic() + 5
    while replica.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replica.streams == {}
    assert replica.push(busy, 1, frames) == {"error": "closed",
                                             "message": "the stream was closed after 0.4 s without a push"}
    assert replica.push("x" * 22, 0, frames) == {"error": "refused"}


def test_replica_runs_a_window_of_pushes_in_order_and_answers_the_rest_at_once(cpu_bundle):
    from runtime.serve.replica import StreamReplica
    replica = StreamReplica(str(cpu_bundle), threads=1, max_streams=2, order_timeout_s=0.5)
    frames = moving_frames(16, *SIZE, seed=5)
    pieces = [frames[i:i + 4] for i in range(0, 16, 4)]
    sid, alone = replica.open(), replica.open()
    expected = [replica.push(alone, seq, piece)["frames"] for seq, piece in enumerate(pieces)]

    for seq in (4, 100, 10 ** 12):               # beyond the window of 4: no thread waits for them
        answer = answer_within(2, replica.push, sid, seq, pieces[0])
        assert answer["error"] == "order" and "came too early" in answer["message"]
    answers = {}
    waiting = [threading.Thread(target=lambda seq=seq: answers.update({seq: replica.push(sid, seq, pieces[seq])}))
               for seq in (3, 1, 2)]             # pipelined, and out of order on the wire
    for thread in waiting:
        thread.start()
    time.sleep(0.1)
    assert answer_within(2, replica.push, sid, 1, pieces[1]) == {"error": "order", "message": "push 1 was sent twice"}
    answers[0] = replica.push(sid, 0, pieces[0])
    for thread in waiting:
        thread.join(10)
    for seq in range(4):
        np.testing.assert_array_equal(answers[seq]["frames"], expected[seq])

    # A push that never comes: the one after it waits order_timeout_s, then says so.
    answer = answer_within(5, replica.push, sid, 5, pieces[0])
    assert answer == {"error": "order", "message": "push 5 waited 0.5 s for push 4, which did not come"}
    # Every argument is checked before it is used.
    assert replica.push(sid, "4", pieces[0]) == {"error": "invalid", "message": "seq must be an int, got str"}
    assert replica.flush(sid, True)["error"] == replica.flush(sid, 4.0)["error"] == "invalid"
    assert replica.push(None, 4, pieces[0]) == replica.push(["x"], 4, pieces[0]) == {"error": "refused"}
    assert replica.push(sid, 4, "frames") == {"error": "bad", "message": "frames must be a numpy array, got str"}
    replica.close(["not", "an", "id"])
    assert "frames" in replica.flush(sid, 5)


def test_one_stream_cannot_hold_up_its_replica_or_the_router(service):
    """A token holder's pushes far ahead get their answer at once; pushes waiting for their turn
    hold only their stream's share of the replica's threads: another stream on the same replica,
    and the router, answer meanwhile."""
    from runtime import serve
    client = serve.connect(None, token=TOKEN)
    frames = moving_frames(8, *SIZE, seed=4)
    with client.open() as stream:
        flood = [stream.replica.push.remote(stream.id, 100 + i, frames[:2]) for i in range(8)]
        assert all(a["error"] == "order" for a in ray.get(flood, timeout=10))
        held = [stream.replica.push.remote(stream.id, seq, frames[:2]) for seq in (1, 2, 3)]    # wait for push 0
        neighbour = serve.Stream(ray.get(stream.replica.open.remote(), timeout=10), stream.replica, stream.info)
        start = time.monotonic()
        with neighbour:
            assert len(np.concatenate([neighbour.push(frames), neighbour.flush()])) == len(frames)
        client.open().close()
        assert time.monotonic() - start < 10
        ray.get(stream.replica.push.remote(stream.id, 0, frames[:2]), timeout=20)
        assert all("frames" in a for a in ray.get(held, timeout=20))
