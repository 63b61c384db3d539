"""What the clients, the replicas, the router and the gRPC endpoint share: names, limits, errors, the
checks of a token and of a push, private files, the yuv420p conversion."""
import os
from pathlib import Path

import numpy as np

from ..errors import RuntimeSetupError

SERVICE, NAMESPACE = "swiftvr-serve", "swiftvr"
TOKEN_ENV = "SWIFTVR_SERVE_TOKEN"
DEFAULT_TOKEN_FILE = Path.home() / ".config" / "swiftvr" / "serve.token"
MIN_TOKEN_CHARS = 16           # secrets.token_urlsafe(32) makes 43
PUSH_WINDOW = 4                # pushes of one stream on its replica at once (running or waiting their turn)
ORDER_TIMEOUT_S = 60.0         # how long a push waits for the pushes before it (pipelined clients)
CONTROL_TIMEOUT_S = 10.0       # how long the router waits for a replica's answer to load() / open()
OPEN_TIMEOUT_S = 60.0          # how long a client waits for the router's answer to open()


class ServeError(RuntimeSetupError):
    """The service said no (the message says why)."""


class Busy(ServeError):
    """Every replica holds its limit of streams: try later, or add replicas."""


class Refused(ServeError):
    """A wrong token or stream id."""


class StreamLost(ServeError):
    """The stream's state is gone (its replica died, or it was closed idle): open a new stream."""


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


def yuv420p_to_rgb(yuv: np.ndarray, width: int, height: int) -> np.ndarray:
    """[T, bytes] yuv420p (ffmpeg's layout) -> uint8 [T, H, W, 3] RGB: BT.601 limited range, in integers,
    the conversion runtime/c/swiftvr.c makes (tests/test_embed.py checks that they agree)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    y = yuv[:, :width * height].reshape(-1, height, width).astype(np.int32)
    u = yuv[:, width * height:width * height + cw * ch].reshape(-1, ch, cw).astype(np.int32)
    v = yuv[:, width * height + cw * ch:].reshape(-1, ch, cw).astype(np.int32)
    u = u.repeat(2, 1).repeat(2, 2)[:, :height, :width] - 128
    v = v.repeat(2, 1).repeat(2, 2)[:, :height, :width] - 128
    c = 298 * (y - 16)
    rgb = np.stack([(c + 409 * v + 128) >> 8, (c - 100 * u - 208 * v + 128) >> 8, (c + 516 * u + 128) >> 8], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def check_token(token, where: str) -> str:
    """The token, if it can be one: a short or empty token would open the service to guessing."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or not token.isascii() \
            or not token.isprintable() or any(c.isspace() for c in token):
        length = f"{len(token)} characters" if isinstance(token, str) else type(token).__name__
        raise ServeError(f"{where}: a service token is at least {MIN_TOKEN_CHARS} printable ASCII characters "
                         f"without spaces (got {length})")
    return token


def read_file(path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ServeError(f"cannot read {what} {path}: {e.strerror}") from None


def read_private_file(path: Path, what: str = "the token file") -> bytes:
    """The bytes of `path`: a file only its owner can read or write (as `chmod 600` leaves it)."""
    if not path.exists():
        raise ServeError(f"{path} is a symbolic link to nothing (a missing file, or a loop): remove it, or "
                         f"link it to {what}")
    if not path.is_file():
        raise ServeError(f"{path} is not a file")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ServeError(f"{path} can be read or changed by other users (mode {mode:04o}): chmod 600 {path}")
    return read_file(path, what)


def read_token_file(path: Path) -> str:
    """The token in `path` (a private file, read_private_file)."""
    return check_token(read_private_file(path).decode(errors="replace").strip(), str(path))


def read_tokens_file(path: Path) -> list[str]:
    """The tokens in `path` (a private file), one per line: one per client of the gRPC endpoint."""
    lines = read_private_file(path, "the tokens file").decode(errors="replace").splitlines()
    tokens = [check_token(line.strip(), f"{path} line {i + 1}") for i, line in enumerate(lines) if line.strip()]
    if not tokens:
        raise ServeError(f"{path} holds no token (one per line)")
    return tokens


def model_spec(spec: dict, source: str):
    """A ModelSpec from its fields as a replica's info() gives them (lists for tuples), from `source`."""
    from ..spec import ModelSpec
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    return ModelSpec(**{**fields, "source": source})


def env_token() -> str | None:
    """The token in SWIFTVR_SERVE_TOKEN, or None when it is not set."""
    return check_token(os.environ[TOKEN_ENV], TOKEN_ENV) if TOKEN_ENV in os.environ else None
