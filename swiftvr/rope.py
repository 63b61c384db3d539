"""3-D rotary position tables of the Wan transformer, computed in numpy (float64, as the reference).

Positions past `rope_max_seq_len` follow the reference's extension rule: the angle step of each
channel is recovered from the stored float32 values at positions 0 and 1 and extrapolated, so
such positions are not exactly `p * omega`. Expressed here as a pure function of the position,
which equals the reference's grow-the-buffer behaviour because positions below the old length
never change and every new position uses the same step.
"""
import numpy as np


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of the head given to time, rows and columns (128 -> 44, 42, 42)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: np.ndarray, dim: int) -> np.ndarray:
    """[len(positions), dim] angles, each frequency repeated twice (interleaved pairs)."""
    omega = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    return np.repeat(positions.astype(np.float64)[:, None] * omega[None, :], 2, axis=1)


def axis_table(positions: np.ndarray, dim: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos and sin [len(positions), dim] for one axis, as the reference's buffers hold them."""
    positions = np.asarray(positions, dtype=np.int64)
    angles = _axis_angles(positions, dim)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    beyond = positions >= max_len
    if beyond.any():
        start = _axis_angles(np.array([0, 1]), dim)
        c, s = np.cos(start).astype(np.float32).astype(np.float64), np.sin(start).astype(np.float32).astype(np.float64)
        step = np.arctan2(s[1] * c[0] - c[1] * s[0], c[1] * c[0] + s[1] * s[0])
        first = np.arctan2(s[0], c[0])
        extrapolated = first[None, :] + positions[beyond].astype(np.float64)[:, None] * step[None, :]
        cos[beyond] = np.cos(extrapolated).astype(np.float32)
        sin[beyond] = np.sin(extrapolated).astype(np.float32)
    return cos, sin


def grid_tables(grid: tuple[int, int, int], head_dim: int, t_offset: int = 0,
                max_len: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """float32 cos, sin [frames*rows*cols, head_dim] for a token grid, tokens frame-major; the
    time axis starts at `t_offset`, rows and columns at 0. Channels are [time | rows | cols]."""
    frames, rows, cols = grid
    dt, dh, dw = axis_dims(head_dim)
    ct, st = axis_table(np.arange(frames) + t_offset, dt, max_len)
    ch, sh = axis_table(np.arange(rows), dh, max_len)
    cw, sw = axis_table(np.arange(cols), dw, max_len)

    def expand(t, h, w):
        return np.concatenate([
            np.broadcast_to(t[:, None, None, :], (frames, rows, cols, dt)),
            np.broadcast_to(h[None, :, None, :], (frames, rows, cols, dh)),
            np.broadcast_to(w[None, None, :, :], (frames, rows, cols, dw)),
        ], axis=-1).reshape(frames * rows * cols, head_dim)

    return expand(ct, ch, cw), expand(st, sh, sw)
