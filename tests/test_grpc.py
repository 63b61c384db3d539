"""runtime.serve's gRPC endpoint (runtime/serve/endpoint.py, restorer.proto), on loopback only.

One local Ray cluster and one `python -m runtime.serve --listen 127.0.0.1:0` process joined to it
(TLS with a certificate made here by openssl, two client tokens, 2 replicas x 3 streams, at most 6
streams through the endpoint and 4 per token, idle timeout IDLE_S) for the whole module: the tests
talk to it as outside clients do, and look at its process (/proc: open files, RSS) and, through
the cluster, at its replicas' sessions. Outputs are compared with a local Session of the same
bundle, one ONNX Runtime thread (as each replica has): frames, not encoded video.
"""
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from test_runtime import PY, REPO, SIZE, cpu_bundle, make_clip, moving_frames, decoded_frames  # noqa: F401
from test_ray import TOKEN, cluster, fresh_env, kill_and_wait  # noqa: F401
from test_stream import frame_times

ray = pytest.importorskip("ray")
grpc = pytest.importorskip("grpc")
from runtime.serve.messages import STREAM_METHOD  # noqa: E402

CLIENT_TOKENS = ("client-a-" + "a" * 24, "client-b-" + "b" * 24)
NAME = "swiftvr-grpc-test"
IDLE_S = 4.0
OUT = (2 * SIZE[0], 2 * SIZE[1])


def openssl(*args, cwd):
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, all signed by it."""
    folder = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=folder)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                            ("client", "extendedKeyUsage=clientAuth")):
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    for key in folder.glob("*.key"):
        key.chmod(0o600)
    return folder


class Server:
    """The runtime.serve process: its address, pid, log, and its replicas' open streams (via Ray)."""

    def __init__(self, process, log: Path, address: str, certs: Path):
        self.process, self.log, self.address, self.certs = process, log, address, certs
        self.pid = process.pid
        self.router = ray.get_actor(NAME, namespace="swiftvr")

    def client(self, token=CLIENT_TOKENS[0], **options):
        from runtime import serve
        return serve.connect(self.address, token=token, tls_ca=self.certs / "ca.pem", **options)

    def replicas(self) -> list:
        return ray.get(self.router.replica_handles.remote())

    def sessions(self) -> int:
        """Streams open on the replicas, the dead ones left out."""
        total = 0
        for replica in self.replicas():
            try:
                total += ray.get(replica.load.remote(), timeout=10)
            except ray.exceptions.RayActorError:
                pass
        return total

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_for_sessions(self, count: int, seconds: float = 10) -> int:
        deadline = time.monotonic() + seconds
        while (now := self.sessions()) != count and time.monotonic() < deadline:
            time.sleep(0.1)
        return now


@pytest.fixture(scope="module")
def server(cluster, cpu_bundle, certs, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("server")
    tokens = folder / "clients.token"
    tokens.write_text("\n".join(CLIENT_TOKENS) + "\n")
    tokens.chmod(0o600)
    log = folder / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [PY, "-m", "runtime.serve", "--engine", str(cpu_bundle), "--replicas", "2", "--max-streams", "3",
             "--address", ray.get_runtime_context().gcs_address, "--name", NAME, "--idle-timeout", str(IDLE_S),
             "--listen", "127.0.0.1:0", "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key"),
             "--client-tokens", str(tokens), "--max-endpoint-streams", "6", "--max-streams-per-token", "4"],
            cwd=REPO, env={**fresh_env(), "SWIFTVR_SERVE_TOKEN": TOKEN}, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while not (found := re.search(r"listening on (grpcs://\S+)", log.read_text())):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    yield Server(process, log, found.group(1), certs)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def local(cpu_bundle):  # noqa: F811
    """frames -> what a local Session of the bundle restores from them (one thread, as the replicas)."""
    from runtime import Session, load_bundle
    model = load_bundle(cpu_bundle, threads=1)

    def restore(frames):
        with Session(model) as session:
            return np.concatenate([session.push(frames), session.flush()])
    return restore


def raw_call(server, messages, metadata=((("authorization", f"Bearer {CLIENT_TOKENS[0]}"),)), channel=None):
    """Restorer/Stream with raw request bytes (what a broken or hostile client sends): (code, details, answers)."""
    channel = channel or grpc.secure_channel(server.address.split("://")[1], grpc.ssl_channel_credentials(
        (server.certs / "ca.pem").read_bytes()), [("grpc.max_send_message_length", -1)])
    call = channel.stream_stream(STREAM_METHOD)(iter(messages), metadata=metadata, timeout=30)
    answers = []
    try:
        answers.extend(call)
    except grpc.RpcError as e:
        return e.code(), e.details(), answers
    finally:
        channel.close()
    return grpc.StatusCode.OK, "", answers


def request(**kind) -> bytes:
    from runtime.serve import restorer_pb2 as pb
    return pb.StreamRequest(**kind).SerializeToString()


# ---- no server needed -------------------------------------------------------------------------

def test_generated_module_is_current(tmp_path):
    """restorer_pb2.py is committed (make proto): it must be what restorer.proto gives now."""
    from grpc_tools import protoc
    assert protoc.main(["protoc", f"-I{REPO}", f"--python_out={tmp_path}",
                        str(REPO / "runtime/serve/restorer.proto")]) == 0
    made = (tmp_path / "runtime/serve/restorer_pb2.py").read_text()
    assert made == (REPO / "runtime/serve/restorer_pb2.py").read_text(), "restorer_pb2.py is stale: run make proto"


def test_messages_with_frames_parse_as_protobuf_made_them():
    """messages.encode: the small fields by protobuf, the frames after them, one message when parsed."""
    from runtime.serve import restorer_pb2 as pb
    from runtime.serve.messages import encode
    rng = np.random.default_rng(0)
    for length in (0, 1, 127, 128, 16383, 16384, 3 * 1920 * 1080):
        data = rng.integers(0, 255, length, np.uint8)
        push = pb.StreamRequest(push=pb.Push(first_index=7, count=3))
        assert pb.StreamRequest.FromString(encode(push, "push", data)) == pb.StreamRequest(
            push=pb.Push(first_index=7, count=3, data=data.tobytes()))
        frames = pb.StreamResponse(frames=pb.Frames(push=2, first_index=9, count=1, last_of_push=True))
        parsed = pb.StreamResponse.FromString(encode(frames, "frames", data.reshape(1, 1, -1, 1)))
        assert parsed == pb.StreamResponse(frames=pb.Frames(push=2, first_index=9, count=1, last_of_push=True,
                                                            data=data.tobytes()))


def test_listen_flags_are_checked_before_ray_starts(tmp_path, capsys):
    from runtime.serve.cli import endpoint_tls, parse_args
    from runtime.serve import ServeError
    from runtime.stream import parse_args as stream_args
    engine = ["--engine", str(tmp_path / "unused.plan")]

    def refused(argv, parse=parse_args) -> str:
        with pytest.raises(SystemExit) as stop:
            parse(argv)
        assert stop.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "not a loopback address" in refused(engine + ["--listen", "0.0.0.0:50051"])
    assert "not a loopback address" in refused(engine + ["--listen", "myhost:50051"])   # a name may be anything
    assert "go together" in refused(engine + ["--listen", "127.0.0.1:1", "--tls-cert", "c.pem"])
    assert "needs --tls-cert" in refused(engine + ["--listen", "127.0.0.1:1", "--tls-client-ca", "ca.pem"])
    assert "add --listen" in refused(engine + ["--client-tokens", "t"])
    assert "must be HOST:PORT" in refused(engine + ["--listen", "50051"])
    for ok in (["--listen", "127.0.0.1:0"], ["--listen", "[::1]:50051"], ["--listen", "localhost:1"],
               ["--listen", "0.0.0.0:1", "--insecure-plaintext"]):
        assert parse_args(engine + ok).listen == ok[1]
    key = tmp_path / "key.pem"
    key.write_text("KEY")
    key.chmod(0o644)
    with pytest.raises(ServeError, match="other users .*chmod 600"):
        endpoint_tls(parse_args(engine + ["--listen", "0.0.0.0:1", "--tls-cert", str(key), "--tls-key", str(key)]))
    assert "are for --serve grpcs://" in refused(["--serve", "auto", "--tls-ca", "ca.pem", "in.mp4", "-o", "o.mp4"],
                                                 stream_args)


# ---- against the running endpoint --------------------------------------------------------------

def test_four_tls_streams_at_once_equal_local_sessions_and_the_limits_hold(server, local):
    from runtime import serve
    from runtime.serve.common import yuv420p_to_rgb
    from test_embed import rgb_to_yuv420p
    clips = [moving_frames(11 + 3 * i, *SIZE, seed=20 + i) for i in range(4)]
    yuv = rgb_to_yuv420p(clips[3])               # the fourth stream pushes yuv420p
    expected = [local(c) for c in clips[:3]] + [local(yuv420p_to_rgb(yuv, *SIZE))]
    client = server.client()
    streams = [client.open() for _ in range(3)] + [client.open(format="yuv420p")]
    assert streams[0].input_size == SIZE and streams[0].output_size == OUT
    with pytest.raises(serve.Busy, match="this token holds its limit of 4 streams"):
        client.open()
    others = server.client(token=CLIENT_TOKENS[1])
    neighbours = [others.open(), others.open()]
    with pytest.raises(serve.Busy, match="the endpoint holds its limit of 6 streams"):
        others.open()
    for s in neighbours:
        s.close()

    inputs = [*clips[:3], yuv]
    outs, at, sizes = [[] for _ in inputs], [0] * 4, (5, 1, 7, 3, 2)
    for step in range(12):                       # interleaved pushes of uneven sizes
        for i, stream in enumerate(streams):
            if at[i] < len(inputs[i]):
                piece = inputs[i][at[i]:at[i] + sizes[(step + i) % len(sizes)]]
                outs[i].append(stream.push(piece))
                at[i] += len(piece)
    for i, stream in enumerate(streams):
        outs[i].append(stream.flush())
        np.testing.assert_array_equal(np.concatenate(outs[i]), expected[i])
    assert server.wait_for_sessions(0) == 0
    client.close(), others.close()


def test_stream_cli_through_the_endpoint_equals_a_local_run(server, cpu_bundle, tmp_path):  # noqa: F811
    from test_ray import stream_cli
    source, local_out, served = tmp_path / "in.mkv", tmp_path / "local.mkv", tmp_path / "served.mkv"
    make_clip(source, moving_frames(14, *SIZE, seed=7))
    env = {**fresh_env(), "SWIFTVR_SERVE_TOKEN": CLIENT_TOKENS[1]}
    done = subprocess.run([PY, "-m", "runtime.stream", "--serve", server.address, "--tls-ca",
                           str(server.certs / "ca.pem"), "--codec", "ffv1", str(source), "-o", str(served)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"served by the gRPC endpoint at {server.address}" in done.stderr
    stream_cli(cpu_bundle, source, local_out)
    np.testing.assert_array_equal(decoded_frames(served), decoded_frames(local_out))
    assert frame_times(served) == frame_times(local_out)


def test_every_refusal_has_its_status_and_harms_neither_the_server_nor_other_streams(server, local):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from runtime import serve
    from runtime.serve import restorer_pb2 as pb
    frames = moving_frames(20, *SIZE, seed=5)
    client = server.client()
    live = client.open()
    out = [live.push(frames[:3])]
    sessions = server.sessions()
    push = pb.Push(first_index=0, count=1, data=bytes(SIZE[0] * SIZE[1] * 3))
    code = grpc.StatusCode
    opening, token = request(open=pb.Open()), (("authorization", f"Bearer {CLIENT_TOKENS[0]}"),)

    def after_open(**push_fields):
        return lambda: raw_call(server, [opening, request(push=pb.Push(**push_fields))])
    tries = {   # each a call, made below
        "no token": lambda: raw_call(server, [opening], metadata=()),
        "a wrong token": lambda: raw_call(server, [opening], metadata=(("authorization", "Bearer " + "w" * 33),)),
        "the token without Bearer": lambda: raw_call(server, [opening],
                                                     metadata=(("authorization", CLIENT_TOKENS[0]),)),
        "the service token (not a client token)": lambda: raw_call(server, [opening],
                                                                   metadata=(("authorization", f"Bearer {TOKEN}"),)),
        "data first, no token": lambda: raw_call(server, [opening, request(push=push)] * 50, metadata=()),
        "huge metadata": lambda: raw_call(server, [opening], metadata=token + (("x-pad", "p" * 100_000),)),
        "garbage message": lambda: raw_call(server, [b"\xff\xfe\xfd garbage"]),
        "an empty message": lambda: raw_call(server, [b""]),
        "a push before Open": lambda: raw_call(server, [request(push=push)]),
        "a second Open": lambda: raw_call(server, [opening, opening]),
        "an unknown pixel format": lambda: raw_call(server, [request(open=pb.Open(format=7))]),
        "a push of the wrong size": after_open(first_index=0, count=2, data=push.data),
        "a push of no frames": after_open(first_index=0),
        "a push at the wrong index": after_open(first_index=5, count=1, data=push.data),
        "too many frames": after_open(first_index=0, count=49, data=push.data * 49),
        "an oversized message": after_open(first_index=0, count=1, data=bytes(8 * 1024 ** 2)),
        "requests end without a Flush": lambda: raw_call(server, [opening, request(push=push)]),
        "a plaintext client on the TLS port": lambda: raw_call(
            server, [opening], channel=grpc.insecure_channel(server.address.split("://")[1])),
    }
    # The live stream pushes a frame between every few attacks: on a loaded machine all of them
    # together may take longer than IDLE_S.
    at = 3

    def keep_alive():
        nonlocal at
        out.append(live.push(frames[at:at + 1]))
        at += 1
    attacks = {}
    for i, (what, attack) in enumerate(tries.items()):
        attacks[what] = attack()
        if i % 5 == 4:
            keep_alive()
    statuses = {what: status for what, (status, _, _) in attacks.items()}
    assert statuses == {
        "no token": code.UNAUTHENTICATED, "a wrong token": code.UNAUTHENTICATED,
        "the token without Bearer": code.UNAUTHENTICATED,
        "the service token (not a client token)": code.UNAUTHENTICATED,
        "data first, no token": code.UNAUTHENTICATED, "huge metadata": code.RESOURCE_EXHAUSTED,
        "garbage message": code.INVALID_ARGUMENT, "an empty message": code.INVALID_ARGUMENT,
        "a push before Open": code.INVALID_ARGUMENT, "a second Open": code.INVALID_ARGUMENT,
        "an unknown pixel format": code.INVALID_ARGUMENT, "a push of the wrong size": code.INVALID_ARGUMENT,
        "a push of no frames": code.INVALID_ARGUMENT, "a push at the wrong index": code.INVALID_ARGUMENT,
        "too many frames": code.INVALID_ARGUMENT, "an oversized message": code.RESOURCE_EXHAUSTED,
        "requests end without a Flush": code.INVALID_ARGUMENT, "a plaintext client on the TLS port": code.UNAVAILABLE,
    }, {what: (status, details) for what, (status, details, _) in attacks.items()}
    assert attacks["no token"][1] == attacks["a wrong token"][1] == "refused"          # no detail
    assert "of 2 RGB24 frames of 17x16 holds 1632 bytes, got 816" in attacks["a push of the wrong size"][1]
    assert "expected 0" in attacks["a push at the wrong index"][1]

    # Not gRPC at all: bytes on the TLS port; the server drops the connection.
    host, port = server.address.split("://")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(os.urandom(65536))
        raw.settimeout(10)
        try:
            while raw.recv(65536):
                pass
        except ConnectionResetError:
            pass

    keep_alive()

    # The Python client checks a push before sending it: refused, the stream goes on.
    with pytest.raises(serve.BadPush, match="the model takes 17x16"):
        live.push(np.zeros((2, 32, 34, 3), np.uint8))
    with pytest.raises(serve.Refused, match="^refused$"):
        server.client(token="z" * 40).open()

    # A health check needs no token (load balancers); its streaming twin does.
    channel = grpc.secure_channel(server.address.split("://")[1],
                                  grpc.ssl_channel_credentials((server.certs / "ca.pem").read_bytes()))
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as watch:
        next(health.Watch(health_pb2.HealthCheckRequest(), timeout=10))
    assert watch.value.code() == code.UNAUTHENTICATED
    channel.close()

    assert server.sessions() == sessions           # no refused call ever reached a replica
    out += [live.push(frames[at:]), live.flush()]
    np.testing.assert_array_equal(np.concatenate(out), local(frames))
    client.close()
    assert server.process.poll() is None and server.wait_for_sessions(0) == 0


def test_open_close_cycles_leave_open_files_memory_and_sessions_flat(server):
    frames = moving_frames(4, *SIZE, seed=1)
    client = server.client()

    def cycles(count):
        nonlocal client
        for i in range(count):
            if i % 20 == 0:                        # a new connection now and then: its socket must go too
                client.close()
                client = server.client()
            stream = client.open()
            stream.push(frames)
            if i % 2:
                stream.flush()
            else:
                stream.close()                     # cancelled: the endpoint closes its replica stream
    cycles(40)                                     # warm-up: thread pools, caches, allocator arenas
    assert server.wait_for_sessions(0, seconds=IDLE_S / 2) == 0          # closed, not timed out
    fds, rss = server.fds(), server.rss_kb()
    start = time.monotonic()
    cycles(200)
    seconds = time.monotonic() - start
    client.close()
    assert server.wait_for_sessions(0, seconds=IDLE_S / 2) == 0
    time.sleep(0.5)                                # the last connection's socket closes on its own thread
    # Leaked per stream, a session's chunk state (ReAE states, ~100 KB here) or a push's frames would
    # show as megabytes over 200 streams; the allocator's own drift stays well under 8 MB.
    assert server.fds() <= fds + 2, (fds, server.fds())
    assert server.rss_kb() - rss < 8 * 1024, (rss, server.rss_kb())
    print(f"200 open/push/close cycles in {seconds:.1f} s; fds {fds} -> {server.fds()}, "
          f"RSS {rss} -> {server.rss_kb()} kB")


def test_a_client_that_stops_reading_slows_only_itself_and_is_cut_off_when_idle(server, local):
    """It pushes as fast as it can and reads nothing: its sends stop soon (HTTP/2 flow control), the
    server's memory stays flat, a neighbour's stream goes on. After IDLE_S without progress its
    replica session is freed; when it reads again it gets what was sent, then DEADLINE_EXCEEDED."""
    from runtime.serve import restorer_pb2 as pb
    frames = moving_frames(48, *SIZE, seed=2)
    push_bytes = frames.tobytes()                  # 48 frames (max_push_frames): 39 KB in, 157 KB out
    sent = []

    def requests():
        yield request(open=pb.Open())
        for i in range(2000):                      # 310 MB of restored frames, were nothing to hold them back
            sent.append(i)
            yield request(push=pb.Push(first_index=48 * i, count=48, data=push_bytes))
    # What the server sends waits in the client's receive window (the client's memory, not the
    # server's): 64 KB here, without the BDP growth that can take it to megabytes, so it fills at once.
    channel = grpc.secure_channel(server.address.split("://")[1],
                                  grpc.ssl_channel_credentials((server.certs / "ca.pem").read_bytes()),
                                  [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)])
    call = channel.stream_stream(STREAM_METHOD)(
        requests(), metadata=(("authorization", f"Bearer {CLIENT_TOKENS[0]}"),))
    rss = server.rss_kb()
    time.sleep(1.5)
    stalled_at = len(sent)
    neighbour = server.client(token=CLIENT_TOKENS[1])
    with neighbour.open() as stream:
        got = np.concatenate([stream.push(frames[:20]), stream.flush()])
    np.testing.assert_array_equal(got, local(frames[:20]))
    neighbour.close()
    assert len(sent) == stalled_at < 2000, (stalled_at, len(sent))
    grown = server.rss_kb() - rss
    assert grown < 32 * 1024, (rss, server.rss_kb())
    assert server.wait_for_sessions(0, seconds=IDLE_S + 5) == 0       # cut off: its replica session is gone
    answers = []
    with pytest.raises(grpc.RpcError) as ended:
        for answer in call:
            answers.append(answer)
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "idle" in ended.value.details()
    assert len(answers) >= 2                       # StreamInfo, then frames it had not read
    channel.close()
    print(f"a client that does not read: {stalled_at} pushes sent before its sends stopped; server RSS "
          f"+{grown} kB; {len(answers)} messages waiting for it")


def test_silent_and_vanished_clients_give_back_their_streams(server):
    """A call that never sends Open ends after IDLE_S without a replica session; a client process
    killed in the middle of a stream frees its replica session within seconds."""
    channel = grpc.secure_channel(server.address.split("://")[1],
                                  grpc.ssl_channel_credentials((server.certs / "ca.pem").read_bytes()))
    silence = threading.Event()
    call = channel.stream_stream(STREAM_METHOD)(
        iter(silence.wait, True), metadata=(("authorization", f"Bearer {CLIENT_TOKENS[0]}"),))
    time.sleep(0.5)
    assert server.sessions() == 0
    start = time.monotonic()
    assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert IDLE_S - 1 < time.monotonic() - start + 0.5 < IDLE_S + 3
    silence.set()
    channel.close()

    script = ("import sys, time, numpy as np\nfrom runtime import serve\n"
              f"c = serve.connect({server.address!r}, token={CLIENT_TOKENS[0]!r}, "
              f"tls_ca={str(server.certs / 'ca.pem')!r})\n"
              f"s = c.open()\ns.push(np.zeros((3, {SIZE[1]}, {SIZE[0]}, 3), np.uint8))\n"
              "print('pushed', flush=True)\ntime.sleep(60)\n")
    client = subprocess.Popen([PY, "-c", script], cwd=REPO, env=fresh_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "pushed"
        assert server.sessions() == 1
        client.kill()
        start = time.monotonic()
        assert server.wait_for_sessions(0, seconds=IDLE_S / 2) == 0          # before any idle timeout
        print(f"a killed client's replica session was freed in {time.monotonic() - start:.2f} s")
    finally:
        client.kill()
        client.wait()


def test_client_certificates_when_the_endpoint_asks_for_them(server, certs):
    """A second endpoint on the same service, in this process, that wants client certificates."""
    from runtime import serve
    from runtime.serve.endpoint import TLS, Endpoint, Limits
    endpoint = Endpoint(server.router, listen="127.0.0.1:0", tokens=[CLIENT_TOKENS[0]], service_token=TOKEN,
                        limits=Limits(max_streams=2, max_streams_per_token=2, idle_timeout_s=IDLE_S),
                        tls=TLS(cert=(certs / "server.pem").read_bytes(), key=(certs / "server.key").read_bytes(),
                                client_ca=(certs / "ca.pem").read_bytes()))
    try:
        ca = certs / "ca.pem"
        with pytest.raises(serve.ServeError, match="cannot reach the endpoint"):
            serve.connect(endpoint.address, token=CLIENT_TOKENS[0], tls_ca=ca).open()
        frames = moving_frames(9, *SIZE, seed=3)
        with serve.connect(endpoint.address, token=CLIENT_TOKENS[0], tls_ca=ca, tls_cert=certs / "client.pem",
                           tls_key=certs / "client.key") as client, client.open() as stream:
            assert len(np.concatenate([stream.push(frames), stream.flush()])) == 9
    finally:
        endpoint.stop()


def test_a_killed_replica_ends_only_its_streams_with_unavailable(server, local):
    from runtime import serve
    clip = moving_frames(16, *SIZE, seed=9)
    expected = local(clip)
    client = server.client()
    streams = [client.open() for _ in range(4)]        # the least loaded replica each time: 2 and 2
    firsts = [s.push(clip[:4]) for s in streams]
    doomed = server.replicas()[0]
    kill_and_wait(doomed)
    lost, done = 0, 0
    for stream, first in zip(streams, firsts):
        try:
            out = np.concatenate([first, stream.push(clip[4:]), stream.flush()])
        except serve.StreamLost as e:
            assert "replica died" in str(e)
            lost += 1
        else:
            np.testing.assert_array_equal(out, expected)
            done += 1
    assert (lost, done) == (2, 2)
    with client.open() as stream:                      # the dead replica is replaced
        np.testing.assert_array_equal(np.concatenate([stream.push(clip), stream.flush()]), expected)
    client.close()
