"""MFSWA window geometry: the spec's examples and its invariants over many grids and windows."""
import numpy as np
import pytest

from swiftvr.geometry import (gather_index, is_shifted, owner_index, window_layout, window_starts)

SPEC_EXAMPLES = [  # (size, window, plain starts, shifted starts) from SPEC.md d
    (5, 4, [0, 1], [0, 1]), (6, 4, [0, 2], [0, 2]), (7, 4, [0, 3], [0, 3]), (8, 4, [0, 4], [0, 4]),
    (9, 4, [0, 4, 5], [0, 2, 5]), (11, 4, [0, 4, 7], [0, 2, 6, 7]),
    (22, 4, [0, 4, 8, 12, 16, 18], [0, 2, 6, 10, 14, 18]),
    (34, 16, [0, 16, 18], [0, 8, 18]), (60, 16, [0, 16, 32, 44], [0, 8, 24, 40, 44]),
    (3, 4, [0], [0]), (4, 4, [0], [0]),
]


@pytest.mark.parametrize("size, window, plain, shifted", SPEC_EXAMPLES)
def test_spec_examples(size, window, plain, shifted):
    assert window_starts(size, window, False) == plain
    assert window_starts(size, window, True) == shifted


def test_shift_schedule():
    assert [is_shifted(n) for n in range(4)] == [False, True, False, True]


def covering(position, starts, window):
    return [i for i, s in enumerate(starts) if s <= position < s + window]


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 8, 16])
@pytest.mark.parametrize("shifted", [False, True])
def test_axis_invariants(window, shifted):
    for size in range(1, 80):
        starts = window_starts(size, window, shifted)
        w = min(window, size)
        assert starts == sorted(set(starts)), "sorted and unique"
        assert all(0 <= s <= size - w for s in starts), "no window past the border"
        for p in range(size):
            assert covering(p, starts, w), f"position {p} of {size} uncovered"


GRIDS = [(1, 1, 1), (2, 3, 5), (3, 9, 11), (4, 7, 11), (2, 16, 16), (1, 17, 33), (7, 34, 60), (3, 5, 22)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("window_hw", [(2, 2), (4, 4), (3, 5), (16, 16)])
@pytest.mark.parametrize("shifted", [False, True])
def test_every_token_has_exactly_one_owner_by_the_rule(grid, window_hw, shifted):
    layout = window_layout(grid, window_hw, shifted)
    frames, rows, cols = grid
    gather = gather_index(layout)
    owner = owner_index(layout)
    tokens = frames * rows * cols
    assert gather.shape == (layout.num_windows, layout.tokens_per_window)
    assert gather.min() >= 0 and gather.max() < tokens
    assert set(np.unique(gather)) == set(range(tokens)), "every token is in some window"
    assert owner.shape == (tokens,)
    # The owner slot holds the token itself: exactly one result per token, taken from a window containing it.
    np.testing.assert_array_equal(gather.reshape(-1)[owner], np.arange(tokens))
    # Owner rule: the earliest (plain) or latest (shifted) window index containing the token.
    owner_window = owner // layout.tokens_per_window
    for token in range(0, tokens, max(1, tokens // 97)):
        containing = np.nonzero((gather == token).any(axis=1))[0]
        assert owner_window[token] == (containing.max() if shifted else containing.min())
