"""Nests of values (tuples / lists / dicts / None around leaves): the one walker over them.

Stage inputs and outputs are such nests (a state is a dict of arrays, encode returns a tuple).
CUDA lanes walk them to tell the allocator where arrays are used; CUDA graphs flatten them into
static buffers and rebuild them from other tensors.
"""


def flatten(value) -> tuple[list, object]:
    """The leaves of a nest, in order, and a structure to rebuild it from other leaves."""
    leaves = []

    def walk(v):
        if isinstance(v, (tuple, list)):
            return (type(v), [walk(x) for x in v])
        if isinstance(v, dict):
            return (dict, [(k, walk(x)) for k, x in v.items()])
        if v is None:
            return None
        leaves.append(v)
        return len(leaves) - 1
    return leaves, walk(value)


def rebuild(structure, leaves: list):
    """The nest `structure` (from flatten) with `leaves` in its places."""
    if structure is None:
        return None
    if isinstance(structure, int):
        return leaves[structure]
    kind, items = structure
    if kind is dict:
        return {k: rebuild(s, leaves) for k, s in items}
    return kind(rebuild(s, leaves) for s in items)
