"""Which TensorRT execution contexts share one activation buffer, and how large each buffer is.

Written once, for the memory plan (engines/memory.py: make_bundle, engines.inspect) and for the
runtime (runtime/backends/tensorrt.py, which allocates these buffers and hands them to the contexts
with TensorRT's user-managed context memory), so that the plan counts exactly what the runtime
allocates.

A context uses its activation memory only while its engine runs, so engines whose calls never
overlap in time can share one buffer. The runtime runs each stage on its lane (runtime/lanes.py):
the encoder on `encode`, every DiT part (of every latent-frame count) on `dit`, the decoder on
`decode`, and the calls of one lane run one after another on its CUDA stream. Hence:

  overlap on    one buffer per lane: the encoder's, one for all DiT parts, the decoder's;
  overlap off   every lane runs on one stream: one buffer for every engine.

A buffer is as large as the largest need among its engines. Sharing is per Session: each Session
has its own contexts and buffers, and two Sessions run at the same time.
"""
from dataclasses import dataclass

# The lane each graph role runs on (runtime/lanes.py STAGES; runtime/backend.py's Runner routes them).
LANES = {"encoder": "encode", "dit": "dit", "decoder": "decode"}


@dataclass(frozen=True)
class ContextBuffer:
    engines: tuple[str, ...]    # the engines whose contexts use this buffer, in chain order
    nbytes: int                 # the largest activation need among them

    def to_json(self) -> dict:
        return {"engines": list(self.engines), "bytes": self.nbytes}


def context_buffers(needs: list[tuple[str, str, int]], overlap: bool) -> list[ContextBuffer]:
    """needs: (engine name, role, activation bytes it needs) in chain order -> the buffers, in the
    order of their first engine. overlap: whether the stages run on their own streams."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for name, role, nbytes in needs:
        if role not in LANES:
            raise ValueError(f"engine {name}: no lane runs role {role!r} (roles: {', '.join(LANES)})")
        if nbytes < 0:
            raise ValueError(f"engine {name}: negative activation memory {nbytes}")
        groups.setdefault(LANES[role] if overlap else "one stream", []).append((name, nbytes))
    return [ContextBuffer(tuple(n for n, _ in members), max(b for _, b in members)) for members in groups.values()]
