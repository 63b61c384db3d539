"""MFSWA window geometry: where the windows sit and which window owns each token.

Free of torch on purpose: the export bakes these indices into the graph and the runtime and
tests reason about them without importing the model. Rules are the reference's (SPEC.md d).
"""
from dataclasses import dataclass
import math

import numpy as np


def is_shifted(block_index: int) -> bool:
    """Even blocks attend in plain windows, odd blocks in windows shifted by half a window."""
    return block_index % 2 == 1


def window_starts(size: int, window: int, shifted: bool) -> list[int]:
    """Start positions of the windows along one axis of `size` tokens."""
    if size <= window:
        return [0]
    shift = window // 2 if shifted else 0
    count = math.ceil(size / window) + 2
    starts = sorted({min(max(k * window - shift, 0), size - window) for k in range(count)})
    if len(starts) > 2:
        # An interior window is redundant when its neighbours already touch each other.
        # Decided on the list before removal, as the reference does.
        keep = [starts[0]]
        keep += [starts[i] for i in range(1, len(starts) - 1) if starts[i + 1] > starts[i - 1] + window]
        keep.append(starts[-1])
        starts = keep
    return starts


def owner_starts(size: int, window: int, starts: list[int], shifted: bool) -> np.ndarray:
    """For each position on the axis, the index of the start whose window gives its output:
    the earliest covering window in plain layers, the latest in shifted ones."""
    position = np.arange(size)[:, None]
    begin = np.asarray(starts)[None, :]
    covers = (position >= begin) & (position < begin + window)
    if shifted:
        return len(starts) - 1 - np.argmax(covers[:, ::-1], axis=1)
    return np.argmax(covers, axis=1)


@dataclass(frozen=True)
class WindowLayout:
    """Windows of one attention layer over a token grid of frames x rows x cols."""
    grid: tuple[int, int, int]        # (frames, rows, cols) in tokens
    window: tuple[int, int]           # (rows, cols) actually used, clipped to the grid
    shifted: bool
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def num_windows(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    @property
    def tokens_per_window(self) -> int:
        return self.grid[0] * self.window[0] * self.window[1]


def window_layout(grid: tuple[int, int, int], window_hw: tuple[int, int], shifted: bool) -> WindowLayout:
    frames, rows, cols = grid
    wh, ww = min(window_hw[0], rows), min(window_hw[1], cols)
    return WindowLayout(grid=(frames, rows, cols), window=(wh, ww), shifted=shifted,
                        row_starts=tuple(window_starts(rows, wh, shifted)),
                        col_starts=tuple(window_starts(cols, ww, shifted)))


def gather_index(layout: WindowLayout) -> np.ndarray:
    """[num_windows, tokens_per_window] global token indices, windows row-major, tokens inside a
    window frame-major, then row, then column (token index = (f * rows + y) * cols + x)."""
    frames, rows, cols = layout.grid
    wh, ww = layout.window
    f = np.arange(frames)[:, None, None]
    dy = np.arange(wh)[None, :, None]
    dx = np.arange(ww)[None, None, :]
    windows = []
    for r in layout.row_starts:
        for c in layout.col_starts:
            windows.append(((f * rows + r + dy) * cols + c + dx).reshape(-1))
    return np.stack(windows).astype(np.int64)


def owner_index(layout: WindowLayout) -> np.ndarray:
    """[tokens] position in the flattened [num_windows * tokens_per_window] attention output
    that holds each token's result. Ownership is decided per axis: with row-major windows the
    earliest (latest) window containing a token is the one with the earliest (latest) covering
    row start and, within it, the earliest (latest) covering column start."""
    frames, rows, cols = layout.grid
    wh, ww = layout.window
    row_owner = owner_starts(rows, wh, list(layout.row_starts), layout.shifted)
    col_owner = owner_starts(cols, ww, list(layout.col_starts), layout.shifted)
    row_start = np.asarray(layout.row_starts)[row_owner]
    col_start = np.asarray(layout.col_starts)[col_owner]
    f = np.arange(frames)[:, None, None]
    y = np.arange(rows)[None, :, None]
    x = np.arange(cols)[None, None, :]
    window_id = row_owner[None, :, None] * len(layout.col_starts) + col_owner[None, None, :]
    offset = (f * wh + (y - row_start[None, :, None])) * ww + (x - col_start[None, None, :])
    return (window_id * layout.tokens_per_window + offset).reshape(-1).astype(np.int64)


def attention_layouts(grid: tuple[int, int, int], window_hw: tuple[int, int], num_layers: int) -> list[WindowLayout]:
    """The layout of every block; only two distinct ones exist (plain and shifted)."""
    plain = window_layout(grid, window_hw, shifted=False)
    shifted = window_layout(grid, window_hw, shifted=True)
    return [shifted if is_shifted(n) else plain for n in range(num_layers)]
