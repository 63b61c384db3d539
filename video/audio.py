"""Audio packets handed from the reader thread to the writer thread, copied, never re-encoded."""

from __future__ import annotations

import collections
import threading
from fractions import Fraction


class AudioPassthrough:
    """Audio packets demuxed by the reader, waiting to be muxed (not re-encoded) by a writer.

    The reader puts packets in demux order; the writer takes the ones due before the
    video it has written. Memory stays bounded because the reader only runs ahead of the
    writer by the runtime's frame queue, so only that much audio waits here. Once the
    writer closes, further packets are dropped.
    """

    def __init__(self, stream):
        self.stream = stream  # the input audio stream, a template for the output stream
        self._packets: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._closed = False

    def put(self, packet) -> None:
        with self._lock:
            if not self._closed:
                self._packets.append(packet)

    def take(self, until: Fraction | None = None, shift: Fraction = Fraction(0)) -> list:
        """Pop the packets whose time (seconds, minus `shift`) is before `until`; all if None."""
        taken = []
        with self._lock:
            while self._packets:
                packet = self._packets[0]
                ts = packet.pts if packet.pts is not None else packet.dts
                if until is not None and ts is not None and ts * packet.time_base - shift >= until:
                    break
                taken.append(self._packets.popleft())
        return taken

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._packets.clear()
