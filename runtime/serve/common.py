"""What the client, the replicas and the router share: names, errors, the check of a push."""
from pathlib import Path

import numpy as np

from ..errors import RuntimeSetupError

SERVICE, NAMESPACE = "swiftvr-serve", "swiftvr"
TOKEN_ENV = "SWIFTVR_SERVE_TOKEN"
DEFAULT_TOKEN_FILE = Path.home() / ".config" / "swiftvr" / "serve.token"
ORDER_TIMEOUT_S = 60           # how long a push waits for the pushes before it (pipelined clients)


class ServeError(RuntimeSetupError):
    """The service said no (the message says why)."""


class Busy(ServeError):
    """Every replica holds its limit of streams: try later, or add replicas."""


class Refused(ServeError):
    """A wrong token or stream id."""


class StreamLost(ServeError):
    """The replica holding the stream died: its state is gone, open a new stream."""


class BadPush(ServeError, ValueError):
    """Frames the model cannot take; the stream is unchanged."""


def check_frames(frames, input_size: tuple[int, int], max_frames: int) -> str | None:
    """Why these frames cannot be pushed, or None. Checked by the client and again by the replica."""
    width, height = input_size
    if not isinstance(frames, np.ndarray):
        return f"frames must be a numpy array, got {type(frames).__name__}"
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        return f"frames must be uint8 RGB [T, H, W, 3], got {frames.dtype} {list(frames.shape)}"
    if frames.shape[1:3] != (height, width):
        return f"frames are {frames.shape[2]}x{frames.shape[1]}, the model takes {width}x{height}"
    if not 1 <= len(frames) <= max_frames:
        return f"a push holds 1..{max_frames} frames, got {len(frames)}"
    return None
