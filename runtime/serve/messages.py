"""restorer.proto's messages with frames in them, encoded without protobuf copying the frames.

upb (protobuf's Python runtime) serializes a bytes field of megabytes at ~0.5 GB/s: 12 ms for one
1080p RGB frame on this machine, more than all of gRPC's own work for it. A message in which a
field appears twice parses as both merged (the protobuf encoding: embedded messages merge, the
last scalar wins), so a message with frames is sent as its small fields, serialized by protobuf,
followed by the encoding of a message holding only the frames. The bytes before the frames in
that second encoding depend only on their length: protobuf makes them once per length.
"""
import functools

from . import restorer_pb2 as pb

KINDS = {"push": pb.StreamRequest, "frames": pb.StreamResponse}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Restorer"].full_name
# Both sides call it with bytes (no serializer of gRPC's): encode() here, and the endpoint parses
# what it gets itself, so that a message that is not a StreamRequest is INVALID_ARGUMENT.
STREAM_METHOD = f"/{SERVICE_NAME}/Stream"


@functools.lru_cache(maxsize=256)
def data_prefix(kind: str, length: int) -> bytes:
    """The encoding of a message holding only `kind`.data of `length` bytes, less those bytes."""
    encoded = KINDS[kind](**{kind: {"data": bytes(length)}}).SerializeToString()
    return encoded[:len(encoded) - length]


def encode(message, kind: str, data) -> bytes:
    """message (a StreamRequest with push, or a StreamResponse with frames, its data empty) with
    `data` (bytes, or a C-contiguous uint8 array) as its data."""
    view = memoryview(data)
    view = view.cast("B") if view.nbytes else b""          # (an empty view of frames cannot be cast)
    return b"".join((message.SerializeToString(), data_prefix(kind, len(view)), view))
