"""The gRPC endpoint: live streams for clients outside the Ray cluster (restorer.proto is the contract).

  python -m runtime.serve --engine B --replicas 4 --listen 0.0.0.0:50051 --tls-cert cert.pem --tls-key key.pem

An asyncio gRPC server (grpc.aio) on a thread of the runtime.serve process, which is a driver of the
Ray cluster: a call of Restorer/Stream opens a stream on the router (as runtime.serve.connect's
clients do) and relays the call's pushes to that stream's replica, their restored frames back. Its
clients need no access to the cluster: they reach this port only.

Security: loopback unless told otherwise; any other address needs TLS (optionally client
certificates) or the loudly named --insecure-plaintext. Every call's token (metadata
`authorization: Bearer T`) is checked by an interceptor, in constant time, before the call's
handler runs or any of its messages is read; only grpc.health.v1.Health/Check needs none. No
reflection service. Limits: message sizes from the bundle's frame sizes and max_push_frames;
streams per token and in all; metadata size; an idle timeout (nothing received or delivered);
HTTP/2 keepalive, so a vanished peer's calls end. Back-pressure: a stream's reader waits while
IN_FLIGHT pushes are queued for their answers (one more is being answered and sent, one more is
read and sent to the replica: at most PUSH_WINDOW), so a client that stops reading stops its own
sends (HTTP/2 flow control) and the endpoint holds at most those pushes' frames for it. A call
that ends in any way closes its replica stream at once.
"""
import asyncio
import contextvars
import hmac
import ipaddress
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from . import restorer_pb2 as pb
from .common import OPEN_TIMEOUT_S, model_spec, yuv420p_to_rgb
from .messages import SERVICE_NAME, encode

# Pushes queued for their answers: the replica restores one while the next travels. IN_FLIGHT + 2
# must stay within the replica's PUSH_WINDOW (common.py), or a push would be refused as too early.
IN_FLIGHT = 2
RESPONSE_BYTES = 4 * 1024 ** 2     # restored frames per message: as many as fit (gRPC's default receive limit), >= 1
MESSAGE_SLACK = 1024               # a message's fields besides its frames
METADATA_BYTES = 8 * 1024          # a call's metadata (the token is ~50 bytes)
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
CALLER: contextvars.ContextVar[int] = contextvars.ContextVar("caller")    # the token's index, set by TokenCheck


class Refusal(Exception):
    """Ends a call with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Limits:
    max_streams: int                   # streams of the endpoint at once (calls past the token check)
    max_streams_per_token: int
    idle_timeout_s: float
    open_timeout_s: float = OPEN_TIMEOUT_S


@dataclass
class TLS:
    cert: bytes                        # PEM chain
    key: bytes
    client_ca: bytes | None = None     # PEM: clients must show a certificate it signed


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False                   # a name: it may resolve to anything


def split_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); ValueError when it is not one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535 or \
            (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise ValueError(f"--listen {listen!r} must be HOST:PORT (e.g. 127.0.0.1:50051, [::1]:50051, 0.0.0.0:50051)")
    return host, int(port)


class TokenCheck(grpc.aio.ServerInterceptor):
    """Every call but a health check shows one of `tokens` before its handler runs: else UNAUTHENTICATED,
    with no detail. Compared in constant time with every token (no early exit)."""

    def __init__(self, tokens: list[str]):
        self.tokens = [t.encode() for t in tokens]

    def caller(self, metadata) -> int | None:
        values = [v for k, v in metadata or () if k == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str) or not values[0].startswith("Bearer "):
            return None
        given = values[0][len("Bearer "):].encode(errors="replace")
        match = None
        for i, token in enumerate(self.tokens):
            if hmac.compare_digest(given, token):
                match = i
        return match

    async def intercept_service(self, continuation, details):
        if details.method == HEALTH_CHECK:
            return await continuation(details)
        caller = self.caller(details.invocation_metadata)
        if caller is None:
            return refuse_unauthenticated
        CALLER.set(caller)
        return await continuation(details)


async def _refuse(request_iterator, context):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "refused")

# Streaming both ways, whatever the method: nothing is read before the refusal.
refuse_unauthenticated = grpc.stream_stream_rpc_method_handler(_refuse)


def frame_bytes(format: int, width: int, height: int) -> int:
    if format == pb.YUV420P:
        return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)
    return width * height * 3


@dataclass
class StreamCall:
    """One call of Restorer/Stream: its replica stream and where it is."""
    context: grpc.aio.ServicerContext
    format: int
    stream_id: str = ""
    replica: object = None
    frames_in: int = 0
    frames_out: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    ended: bool = False                # the replica stream is closed (flushed, or closed by us)

    def touch(self) -> None:
        self.last_activity = time.monotonic()


class Restorer:
    """The Restorer service: one call, one stream on a replica (see restorer.proto)."""

    def __init__(self, router, service_token: str, info: dict, limits: Limits):
        self.router, self.service_token, self.limits = router, service_token, limits
        self.spec = info["spec"]
        self.max_push_frames = info["max_push_frames"]
        (self.in_w, self.in_h), (self.out_w, self.out_h) = self.spec["input_size"], self.spec["output_size"]
        out_frame = self.out_w * self.out_h * 3
        self.frames_per_message = max(1, RESPONSE_BYTES // out_frame)
        self.max_receive = self.max_push_frames * self.in_w * self.in_h * 3 + MESSAGE_SLACK
        self.max_send = self.frames_per_message * out_frame + MESSAGE_SLACK
        self.streams: dict[int, int] = {}         # caller -> streams open (the event loop's thread only)
        spec = model_spec(self.spec, self.spec["source"].rstrip("/").rsplit("/", 1)[-1])   # no server path
        self.stream_info = pb.StreamInfo(
            input_width=self.in_w, input_height=self.in_h, output_width=self.out_w, output_height=self.out_h,
            clip_len=spec.clip_len, max_push_frames=self.max_push_frames,
            max_message_bytes=max(self.max_receive, self.max_send), source=spec.source, backend=spec.backend,
            device=spec.device, precision=spec.precision, quantization=spec.quantization or "",
            dit_overlap=spec.dit_overlap)

    def handler(self) -> grpc.GenericRpcHandler:
        # Raw bytes in: a message that is not a StreamRequest is the handler's INVALID_ARGUMENT,
        # not a deserializer's INTERNAL.
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Stream": grpc.stream_stream_rpc_method_handler(self.stream)})

    async def stream(self, request_iterator, context):
        caller = CALLER.get()
        call = StreamCall(context, pb.RGB24)
        try:
            self._admit(caller)
            # Counted until the call has ended at the transport, not when this returns: a status
            # waits behind the frames its client has not read (gRPC has no other way to end the
            # call from here), and those frames (at most a message) stay with the call until then.
            context.add_done_callback(lambda _: self._release(caller))
            await self._run(call)
        except Refusal as refusal:
            self._close(call)                  # the replica's session goes now, whatever the client does
            await context.abort(refusal.code, refusal.message)
        finally:
            self._close(call)

    def _close(self, call: StreamCall) -> None:
        """Close the call's replica stream, if it has one not yet closed (its Session is freed now)."""
        if call.replica is not None and not call.ended:
            call.ended = True
            try:
                call.replica.close.remote(call.stream_id)
            except Exception:                  # the replica is gone already
                pass

    def _release(self, caller: int) -> None:
        self.streams[caller] -= 1

    def _admit(self, caller: int) -> None:
        if sum(self.streams.values()) >= self.limits.max_streams:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"busy: the endpoint holds its limit of {self.limits.max_streams} streams; try again later")
        if self.streams.get(caller, 0) >= self.limits.max_streams_per_token:
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"this token holds its limit of {self.limits.max_streams_per_token} streams")
        self.streams[caller] = self.streams.get(caller, 0) + 1

    async def _run(self, call: StreamCall) -> None:
        first = await self._within_idle(call, call.context.read())
        request = self._parse(first)
        if request.WhichOneof("kind") != "open":
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a stream must be Open")
        if request.open.format not in (pb.RGB24, pb.YUV420P):
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"unknown pixel format {request.open.format}")
        call.format = request.open.format
        await self._open(call)
        await self._within_idle(call, call.context.write(pb.StreamResponse(info=self.stream_info).SerializeToString()))
        pending: asyncio.Queue = asyncio.Queue(maxsize=IN_FLIGHT)
        reader = asyncio.create_task(self._read(call, pending))
        try:
            while True:
                item = await self._within_idle(call, pending.get())
                if isinstance(item, Refusal):
                    raise item
                kind, seq, ref = item
                frames = await self._within_idle(call, self._answer(ref))
                await self._send_frames(call, seq, frames)
                if kind == "flush":
                    call.ended = True
                    await self._within_idle(call, call.context.write(
                        pb.StreamResponse(end=pb.End(frames=call.frames_out)).SerializeToString()))
                    return
        finally:
            reader.cancel()

    async def _open(self, call: StreamCall) -> None:
        from ray.exceptions import RayError
        try:
            answer = await asyncio.wait_for(asyncio.wrap_future(self.router.open.remote(self.service_token).future()),
                                            self.limits.open_timeout_s)
        except asyncio.TimeoutError:
            raise Refusal(grpc.StatusCode.UNAVAILABLE, f"the service did not answer in "
                                                        f"{self.limits.open_timeout_s:g} s; try again later") from None
        except RayError:                   # the router is gone: the service is stopping
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "the service has stopped") from None
        if answer.get("error") == "busy":
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          "busy: every replica holds its limit of streams; try again later")
        if "error" in answer:              # the router refused the endpoint's own token: a setup error
            raise Refusal(grpc.StatusCode.INTERNAL, "the service refused the endpoint")
        call.stream_id, call.replica = answer["id"], answer["replica"]

    def _parse(self, raw) -> pb.StreamRequest:
        if raw is grpc.aio.EOF:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the requests ended without a Flush")
        try:
            return pb.StreamRequest.FromString(raw)
        except DecodeError:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, "a message that is not a StreamRequest") from None

    async def _read(self, call: StreamCall, pending: asyncio.Queue) -> None:
        """The client's messages after Open, each checked and sent on to the replica, in order; a
        refusal goes in the queue after the pushes before it. Waits while IN_FLIGHT are pending."""
        seq = 0
        try:
            while True:
                request = self._parse(await call.context.read())
                call.touch()
                kind = request.WhichOneof("kind")
                if kind == "push":
                    frames = await self._frames(call, request.push)
                    ref = call.replica.push.remote(call.stream_id, seq, frames)
                elif kind == "flush":
                    ref = call.replica.flush.remote(call.stream_id, seq)
                else:
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                                  "a second Open" if kind == "open" else "an empty StreamRequest")
                await pending.put((kind, seq, ref))
                seq += 1
                if kind == "flush":
                    return
        except Refusal as refusal:
            await pending.put(refusal)
        except Exception as e:             # not the client's doing: the call ends, the endpoint goes on
            await pending.put(Refusal(grpc.StatusCode.INTERNAL, f"the endpoint failed: {type(e).__name__}: {e}"))

    async def _frames(self, call: StreamCall, push) -> np.ndarray:
        """The push's frames as the model takes them (uint8 RGB), or a refusal saying what is wrong."""
        if push.first_index != call.frames_in:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                          f"push first_index {push.first_index}, expected {call.frames_in} (the frames pushed so far)")
        if not 1 <= push.count <= self.max_push_frames:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a push holds 1..{self.max_push_frames} frames, got {push.count}")
        size, data = frame_bytes(call.format, self.in_w, self.in_h), push.data       # (each .data is a copy)
        if len(data) != push.count * size:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a push of {push.count} {pb.PixelFormat.Name(call.format)} frames of {self.in_w}x"
                          f"{self.in_h} holds {push.count * size} bytes, got {len(data)}")
        call.frames_in += push.count
        data = np.frombuffer(data, np.uint8)
        if call.format == pb.YUV420P:
            return await asyncio.to_thread(yuv420p_to_rgb, data.reshape(push.count, size), self.in_w, self.in_h)
        return data.reshape(push.count, self.in_h, self.in_w, 3)

    async def _answer(self, ref) -> np.ndarray:
        """A replica's answer to a push or flush: its frames, or the refusal it means."""
        from ray.exceptions import RayError
        from ..batch.pool import worker_deaths
        try:
            answer = await asyncio.wrap_future(ref.future())
        except worker_deaths():
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "the stream's replica died; the stream's state (ReAE, chunk "
                                                       "history) is gone: open a new stream") from None
        except RayError as e:
            cause = str(getattr(e, "cause", None) or e).strip().splitlines()
            raise Refusal(grpc.StatusCode.INTERNAL, f"the replica failed: {cause[-1] if cause else type(e).__name__}") \
                from None
        error = answer.get("error")
        if error == "closed":
            raise Refusal(grpc.StatusCode.UNAVAILABLE, f"{answer['message']}; open a new stream")
        if error:                          # the endpoint checked and numbered the push: not the client's doing
            raise Refusal(grpc.StatusCode.INTERNAL, f"the replica answered {error}: {answer.get('message', '')}")
        return answer["frames"]

    async def _send_frames(self, call: StreamCall, seq: int, frames: np.ndarray) -> None:
        """The restored frames of push `seq`, frames_per_message at a time; at least one message."""
        starts = range(0, len(frames), self.frames_per_message) if len(frames) else [0]
        for start in starts:
            piece = frames[start:start + self.frames_per_message]
            message = pb.StreamResponse(frames=pb.Frames(push=seq, first_index=call.frames_out, count=len(piece),
                                                         last_of_push=start + self.frames_per_message >= len(frames)))
            await self._within_idle(call, call.context.write(encode(message, "frames", np.ascontiguousarray(piece))))
            call.frames_out += len(piece)

    async def _within_idle(self, call: StreamCall, awaitable):
        """awaitable's result; DEADLINE_EXCEEDED when nothing was received from or delivered to the
        client, and no replica answered, for the idle timeout meanwhile."""
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                left = call.last_activity + self.limits.idle_timeout_s - time.monotonic()
                if left <= 0:
                    raise Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, f"the stream was idle for "
                                  f"{self.limits.idle_timeout_s:g} s (nothing received or delivered)")
                done, _ = await asyncio.wait({task}, timeout=left)
                if done:
                    call.touch()
                    return task.result()
        finally:
            if not task.done():
                task.cancel()            # a cancelled write may still fail when the call ends: not news
                task.add_done_callback(lambda t: t.cancelled() or t.exception())


def server_options(restorer: Restorer, limits: Limits) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", restorer.max_receive),
        ("grpc.max_send_message_length", restorer.max_send),
        ("grpc.max_metadata_size", METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", METADATA_BYTES),
        ("grpc.max_concurrent_streams", limits.max_streams + 8),        # HTTP/2 streams per connection
        ("grpc.keepalive_time_ms", 30_000),            # a peer gone without a word: its calls end in ~40 s
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),      # a client pinging faster is cut off
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", 300_000),      # connections with no call are closed
        ("grpc.server_handshake_timeout_ms", 10_000),  # and ones that never finish their handshake
        ("grpc.so_reuseport", 0),                      # a port in use is an error, not shared with another server
    ]


class Endpoint:
    """The gRPC server, on an event loop of its own thread. stop() ends its calls (their replica
    streams are closed) and the server."""

    def __init__(self, router, *, listen: str, tokens: list[str], service_token: str, limits: Limits,
                 tls: TLS | None = None, info: dict | None = None):
        import ray
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        host, _ = split_listen(listen)
        info = info or ray.get(router.ready.remote())
        self.restorer = Restorer(router, service_token, info, limits)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-endpoint", daemon=True)
        self.thread.start()

        async def start():
            server = grpc.aio.server(interceptors=[TokenCheck(tokens)], options=server_options(self.restorer, limits))
            server.add_generic_rpc_handlers((self.restorer.handler(),))
            self.health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            if tls:
                credentials = grpc.ssl_server_credentials([(tls.key, tls.cert)], root_certificates=tls.client_ca,
                                                          require_client_auth=tls.client_ca is not None)
                port = server.add_secure_port(listen, credentials)
            else:
                port = server.add_insecure_port(listen)
            await server.start()
            await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
            await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
            return server, port

        try:
            self.server, self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        except RuntimeError as e:            # grpc: "Failed to bind to address ..."
            self._stop_loop()
            raise OSError(f"cannot listen on {listen}: {e}") from None
        self.address = f"{'grpcs' if tls else 'grpc'}://{host}:{self.port}"

    def stop(self, grace_s: float = 1.0) -> None:
        async def stop():
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace_s)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(grace_s + 30)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
