"""A replica: a Ray actor holding one loaded model and many streams' Sessions."""
import os
import secrets
import threading
import time

from .common import ORDER_TIMEOUT_S, check_frames

class _StreamState:
    def __init__(self, session):
        self.session = session
        self.next_seq = 0
        self.order = threading.Condition()
        self.last_used = time.monotonic()


class StreamReplica:
    """One loaded model, many Sessions. Threaded (max_concurrency): streams run side by side, each
    Session used by one thread at a time (its condition), its pushes in sequence order."""

    def __init__(self, engine, backend=None, device=None, threads=None, max_streams=4, max_push_frames=None,
                 idle_timeout_s=600.0):
        from ..load import load_bundle
        self.model = load_bundle(engine, backend, device=device, threads=threads)
        spec = self.model.spec
        self.max_streams, self.idle_timeout_s = max_streams, idle_timeout_s
        self.max_push_frames = max_push_frames or 4 * (spec.clip_len + 4)
        self.streams: dict[str, _StreamState] = {}
        self.lock = threading.Lock()

    def info(self) -> dict:
        import dataclasses
        return {"pid": os.getpid(), "spec": dataclasses.asdict(self.model.spec),
                "max_push_frames": self.max_push_frames, "max_streams": self.max_streams}

    def load(self) -> int:
        """Open streams, after closing those idle too long (their clients are gone)."""
        now = time.monotonic()
        with self.lock:
            idle = [sid for sid, st in self.streams.items() if now - st.last_used > self.idle_timeout_s]
            for sid in idle:
                self.streams.pop(sid).session.close()
            return len(self.streams)

    def open(self) -> str | None:
        from ..session import Session
        self.load()
        with self.lock:
            if len(self.streams) >= self.max_streams:
                return None
            stream_id = secrets.token_urlsafe(16)
            self.streams[stream_id] = _StreamState(Session(self.model, in_flight=self.model.default_in_flight))
            return stream_id

    def _call(self, stream_id: str, seq: int, work) -> dict:
        with self.lock:
            st = self.streams.get(stream_id) if isinstance(stream_id, str) else None
        if st is None:
            return {"error": "refused"}
        with st.order:
            if not st.order.wait_for(lambda: st.next_seq >= seq, timeout=ORDER_TIMEOUT_S) or st.next_seq != seq:
                return {"error": "order", "message": f"push {seq} came out of order (expected {st.next_seq})"}
            try:
                st.last_used = time.monotonic()
                return work(st)
            finally:
                st.next_seq += 1
                st.order.notify_all()

    def push(self, stream_id: str, seq: int, frames) -> dict:
        def work(st):
            why = check_frames(frames, self.model.spec.input_size, self.max_push_frames)
            if why:
                return {"error": "bad", "message": why}
            return {"frames": st.session.push(frames)}
        return self._call(stream_id, seq, work)

    def flush(self, stream_id: str, seq: int) -> dict:
        def work(st):
            out = st.session.flush()
            with self.lock:
                self.streams.pop(stream_id, None)
            st.session.close()
            return {"frames": out}
        return self._call(stream_id, seq, work)

    def close(self, stream_id: str) -> None:
        with self.lock:
            st = self.streams.pop(stream_id, None) if isinstance(stream_id, str) else None
        if st is not None:
            with st.order:
                st.session.close()
