"""The Python client of the gRPC endpoint (restorer.proto): the Stream API of runtime.serve.connect()
for grpcs://HOST:PORT (TLS) and grpc://HOST:PORT (plaintext: loopback, or a network you trust).

    client = runtime.serve.connect("grpcs://host:50051", token=T, tls_ca="ca.pem")
    with client.open() as stream:          # runtime.serve.Busy when the endpoint or every replica is full
        out = stream.push(frames)          # uint8 [T, H, W, 3] -> the restored frames this push completed
        out = stream.flush()

One call of Restorer/Stream per stream. Pushes go out on gRPC's sending thread from a queue; answers
are read in order. A status that ends the call becomes one of ServeError's kinds (UNAUTHENTICATED:
Refused, RESOURCE_EXHAUSTED: Busy, INVALID_ARGUMENT: BadPush, UNAVAILABLE / DEADLINE_EXCEEDED after
Open: StreamLost).
"""
import queue

import grpc
import numpy as np

from . import restorer_pb2 as pb
from .common import PUSH_WINDOW, BadPush, Busy, Refused, ServeError, StreamLost, check_frames, read_file
from .messages import STREAM_METHOD, encode

RECEIVE_LIMIT = 256 * 1024 ** 2     # the largest message it takes: 10 4K frames (see StreamInfo.max_message_bytes)
FORMATS = {"rgb24": pb.RGB24, "yuv420p": pb.YUV420P}
_END = object()


def split_address(address: str) -> tuple[bool, str]:
    """grpcs://HOST:PORT or grpc://HOST:PORT -> (tls, HOST:PORT)."""
    scheme, sep, target = address.partition("://")
    if scheme not in ("grpc", "grpcs") or not sep or ":" not in target.strip("/"):
        raise ServeError(f"{address!r}: a gRPC endpoint is grpcs://HOST:PORT (TLS) or grpc://HOST:PORT")
    return scheme == "grpcs", target.strip("/")


class GrpcClient:
    def __init__(self, address: str, token: str, *, tls_ca=None, tls_cert=None, tls_key=None):
        tls, target = split_address(address)
        self.address = address
        self.metadata = (("authorization", f"Bearer {token}"),)
        options = [("grpc.max_receive_message_length", RECEIVE_LIMIT), ("grpc.max_send_message_length", -1)]
        if tls:
            if (tls_cert is None) != (tls_key is None):
                raise ServeError("a client certificate needs both tls_cert and tls_key")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read_file(tls_ca, "the CA certificate") if tls_ca else None,
                private_key=read_file(tls_key, "the client key") if tls_key else None,
                certificate_chain=read_file(tls_cert, "the client certificate") if tls_cert else None)
            self.channel = grpc.secure_channel(target, credentials, options)
        else:
            if tls_ca or tls_cert:
                raise ServeError(f"{address}: TLS options need a grpcs:// address")
            self.channel = grpc.insecure_channel(target, options)
        self.stream_method = self.channel.stream_stream(STREAM_METHOD,
                                                        response_deserializer=pb.StreamResponse.FromString)

    def open(self, format: str = "rgb24") -> "GrpcStream":
        """A new stream; its pushes are uint8 RGB frames, or with format="yuv420p" bytes [T, W*H*3/2]
        (BT.601 limited range, as ffmpeg -pix_fmt yuv420p lays them out)."""
        if format not in FORMATS:
            raise ServeError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        return GrpcStream(self, format)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GrpcStream:
    """One live stream on the endpoint: the API of runtime.serve.Stream (push, flush, submit +
    result, close, a context manager; info as RemoteModel reads it)."""

    def __init__(self, client: GrpcClient, format: str):
        self.address, self.format = client.address, format
        self.requests: queue.Queue = queue.Queue()
        self.call = client.stream_method(iter(self.requests.get, _END), metadata=client.metadata)
        self.seq = 0                        # pushes (and the flush) sent
        self.answered = 0                   # pushes whose answers were read
        self.frames_in = 0
        self.closed = False
        self.opened = False
        self.requests.put(pb.StreamRequest(open=pb.Open(format=FORMATS[format])).SerializeToString())
        response = self._next()
        if response.WhichOneof("kind") != "info":
            self.close()
            raise ServeError(f"the endpoint answered Open with {response.WhichOneof('kind')}, not StreamInfo")
        self.opened = True
        i = self.stream_info = response.info
        self.input_size, self.output_size = (i.input_width, i.input_height), (i.output_width, i.output_height)
        self.max_push_frames = i.max_push_frames
        self.info = {"spec": {"source": i.source, "backend": i.backend, "device": i.device, "precision": i.precision,
                              "input_size": list(self.input_size), "output_size": list(self.output_size),
                              "clip_len": i.clip_len, "dit_overlap": i.dit_overlap, "dit_latent_frames": None,
                              "quantization": i.quantization or None},
                     "max_push_frames": i.max_push_frames, "served_by": "the gRPC endpoint"}

    def submit(self, frames) -> int:
        """Send a push; its answer is result(the number this returns). At most PUSH_WINDOW unanswered."""
        if self.seq - self.answered >= PUSH_WINDOW:
            raise ServeError(f"at most {PUSH_WINDOW} pushes of a stream may wait for their answers: read one first")
        data, count = self._check(frames)
        self._send(encode(pb.StreamRequest(push=pb.Push(first_index=self.frames_in, count=count)), "push", data))
        self.frames_in += count
        return self.seq - 1

    def result(self, seq: int) -> np.ndarray:
        """The frames answering push `seq` (answers are read in order: the oldest first)."""
        if seq != self.answered:
            raise ServeError(f"answers come in order: push {self.answered} is next, not {seq}")
        pieces = []
        while True:
            response = self._next()
            if response.WhichOneof("kind") != "frames" or response.frames.push != seq:
                self.close()
                raise ServeError(f"the endpoint sent {response.WhichOneof('kind')} where push {seq}'s frames belong")
            f = response.frames
            width, height = self.output_size
            pieces.append(np.frombuffer(f.data, np.uint8).reshape(f.count, height, width, 3))
            if f.last_of_push:
                self.answered += 1
                return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

    def push(self, frames) -> np.ndarray:
        return self.result(self.submit(frames))

    def flush(self) -> np.ndarray:
        """The end of the stream: every frame not yet returned (read the answers of pushes still out first)."""
        seq = self.seq
        self._send(pb.StreamRequest(flush=pb.Flush()).SerializeToString())
        while self.answered < seq:          # pushes submitted and never collected: their frames come first
            self.result(self.answered)
        out = self.result(seq)
        end = self._next()
        if end.WhichOneof("kind") != "end":
            raise ServeError(f"the endpoint sent {end.WhichOneof('kind')} after the flush, not End")
        self.requests.put(_END)
        self.closed = True
        return out

    def close(self) -> None:
        """Ends the stream (cancels the call): the endpoint frees its state at once."""
        if not self.closed:
            self.closed = True
            self.requests.put(_END)
            self.call.cancel()

    def _check(self, frames) -> tuple[np.ndarray, int]:
        if self.format == "yuv420p":
            width, height = self.input_size
            size = width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)
            frames = np.asarray(frames)
            if frames.dtype != np.uint8 or frames.ndim != 2 or frames.shape[1] != size or \
                    not 1 <= len(frames) <= self.max_push_frames:
                raise BadPush(f"push refused: yuv420p frames are uint8 [1..{self.max_push_frames}, {size}], got "
                              f"{frames.dtype} {list(frames.shape)}")
            return np.ascontiguousarray(frames), len(frames)
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        why = check_frames(frames, self.input_size, self.max_push_frames)
        if why:
            raise BadPush(f"push refused: {why}")
        return np.ascontiguousarray(frames), len(frames)

    def _send(self, request: bytes) -> None:
        if self.closed:
            raise ServeError("the stream is closed")
        self.requests.put(request)
        self.seq += 1

    def _next(self) -> pb.StreamResponse:
        try:
            return next(self.call)
        except StopIteration:
            self.closed = True
            raise StreamLost("the endpoint ended the stream") from None
        except grpc.RpcError as e:
            self.closed = True
            self.requests.put(_END)
            raise self._error(e.code(), e.details()) from None

    def _error(self, code, details: str) -> ServeError:
        details = details or code.name
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return Refused("refused")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Busy(details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return BadPush(f"push refused: {details} (the stream has ended)")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and self.opened:
            return StreamLost(details)
        if code == grpc.StatusCode.UNAVAILABLE:
            return ServeError(f"cannot reach the endpoint at {self.address}: {details}")
        return ServeError(f"{code.name}: {details}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
