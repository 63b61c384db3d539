"""runtime.batch and runtime.serve on a local Ray cluster (2 CPUs, no dashboard, 200 MB object store).

One cluster for the whole module (Ray starts slowly on 2 cores), so every test here runs in one
pytest-xdist worker (`--dist loadscope` in the Makefile: a file per worker). Workers restore with
one ONNX Runtime thread each; the references do too, so outputs are compared exactly.
"""
import os
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
    """runtime.stream in this process (one ONNX Runtime thread, as a batch worker with 1 CPU)."""
    from runtime import stream
    assert stream.main(["--engine", str(bundle), "--threads", "1", str(source), "-o", str(target)]) == 0


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
    run = BatchRun(str(cpu_bundle), jobs, workers=2, retries=2, write_delay=0.4, progress=False)
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
    assert report["counts"] == {"ok": 1, "failed": 1, "skipped": 0}
    assert video_stream_facts(tmp_path / "out" / "a.mp4")["frames"] == 9


# ---- runtime.serve ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(cluster, cpu_bundle):
    from runtime import serve
    router = serve.start_service(str(cpu_bundle), replicas=2, token=TOKEN, max_streams=2)
    yield router
    ray.get(router.shutdown.remote())
    ray.kill(router)


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
    ray.kill(doomed)
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
        out += [stream.push(frames[5:]), stream.flush()]
    np.testing.assert_array_equal(np.concatenate(out), expected)


def test_stream_cli_through_the_service_from_another_process(service, cpu_bundle, tmp_path):
    source, local, served = tmp_path / "in.mkv", tmp_path / "local.mkv", tmp_path / "served.mkv"
    make_clip(source, moving_frames(14, *SIZE, seed=7))
    env = {**os.environ, "SWIFTVR_SERVE_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    # The test cluster's own address: "auto" means "the newest cluster on this machine", which another
    # cluster started meanwhile (a batch CLI run, a parallel test worker) can replace.
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run([PY, "-m", "runtime.stream", "--serve", address, str(source), "-o", str(served)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "served by Ray replica" in done.stderr
    done = subprocess.run([PY, "-m", "runtime.stream", "--engine", str(cpu_bundle), "--threads", "1", str(source),
                           "-o", str(local)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(decoded_frames(served), decoded_frames(local))
    assert frame_times(served) == frame_times(local) and audio_payloads(served) == audio_payloads(local)


def test_service_token_file_is_private_and_read_back(tmp_path, monkeypatch):
    from runtime.serve import client, router
    monkeypatch.delenv("SWIFTVR_SERVE_TOKEN", raising=False)
    path = tmp_path / "conf" / "serve.token"
    token = router.service_token(str(path))
    assert len(token) >= 40 and path.stat().st_mode & 0o777 == 0o600
    assert router.service_token(str(path)) == token                     # kept across restarts
    monkeypatch.setattr(client, "DEFAULT_TOKEN_FILE", path)
    assert client.read_token() == token
    monkeypatch.setenv("SWIFTVR_SERVE_TOKEN", "from-env")
    assert client.read_token() == "from-env" and client.read_token("given") == "given"
