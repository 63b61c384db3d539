"""A replica: a Ray actor holding one loaded model and many streams' Sessions.

Its calls, as the router and the client (or a front end in front of them) make them:
  info() -> dict                       the bundle's spec, max_push_frames, max_streams, pid
  load() -> int                        streams open                                   \\  "control" threads:
  open() -> str | None                 a new stream's id, or None when full           |  answered however
  close(stream_id) -> None             forget a stream (its Session closes when idle) /  busy the streams are
  push(stream_id, seq, frames) -> dict {"frames": restored uint8 [T', H, W, 3]} or {"error": ...}
  flush(stream_id, seq) -> dict        the same, the end of the stream (then it is closed)
Pushes and flushes never raise for a caller's mistake; their errors are
  {"error": "refused"}                              an unknown stream id (no detail)
  {"error": "closed", "message": why}               the stream was closed (idle too long, flushed)
  {"error": "bad", "message": why}                  frames the model cannot take; the stream goes on
  {"error": "order" | "invalid", "message": why}    a sequence number out of the window, a wrong type
`seq` numbers a stream's pushes and flush 0, 1, 2...: a client may send up to PUSH_WINDOW of them
before the first answer comes back; they run one at a time, in order.
"""
import collections
import os
import secrets
import threading
import time

from .common import ORDER_TIMEOUT_S, PUSH_WINDOW, check_frames

CONTROL_METHODS = ("info", "load", "open", "close")
CONTROL_THREADS = 2


class _StreamState:
    def __init__(self, session):
        self.session = session
        self.next_seq = 0                  # the call whose turn it is
        self.turn = threading.Condition()  # waited on until next_seq reaches a call's seq
        self.pending: set[int] = set()     # seqs of calls running or waiting (under the replica's lock)
        self.last_used = time.monotonic()  # when its last call ended
        self.closed = ""                   # why it was closed, once it is


class StreamReplica:
    """One loaded model, many Sessions. Threaded: streams run side by side, each Session used by one
    call at a time, in sequence order. A stream holds at most PUSH_WINDOW calls, so that one client
    cannot take the threads of the others (see actor_class)."""

    def __init__(self, engine, backend=None, device=None, threads=None, max_streams=4, max_push_frames=None,
                 idle_timeout_s=600.0, order_timeout_s=ORDER_TIMEOUT_S):
        from ..load import load_bundle
        self.model = load_bundle(engine, backend, device=device, threads=threads)
        spec = self.model.spec
        self.max_streams, self.idle_timeout_s, self.order_timeout_s = max_streams, idle_timeout_s, order_timeout_s
        self.max_push_frames = max_push_frames or 4 * (spec.clip_len + 4)
        self.streams: dict[str, _StreamState] = {}
        self.gone = collections.OrderedDict()      # id -> why, for the last streams closed here
        self.lock = threading.Lock()
        # Idle streams are closed on a timer, not only when someone opens a stream.
        threading.Thread(target=self._close_idle_forever, name="close-idle", daemon=True).start()

    def info(self) -> dict:
        import dataclasses
        return {"pid": os.getpid(), "spec": dataclasses.asdict(self.model.spec),
                "max_push_frames": self.max_push_frames, "max_streams": self.max_streams}

    def load(self) -> int:
        with self.lock:
            return len(self.streams)

    def open(self) -> str | None:
        from ..session import Session
        with self.lock:
            if len(self.streams) >= self.max_streams:
                return None
            stream_id = secrets.token_urlsafe(16)
            self.streams[stream_id] = _StreamState(Session(self.model, in_flight=self.model.default_in_flight))
            return stream_id

    def close(self, stream_id) -> None:
        self._close(stream_id, "closed by its client")

    def close_idle(self) -> list[str]:
        """Close the streams with no call for idle_timeout_s (their clients are gone); their ids."""
        now = time.monotonic()
        with self.lock:
            idle = [sid for sid, st in self.streams.items()
                    if not st.pending and now - st.last_used > self.idle_timeout_s]
        for sid in idle:
            self._close(sid, f"the stream was closed after {self.idle_timeout_s:g} s without a push",
                        only_if_idle=True)
        return idle

    def _close_idle_forever(self) -> None:
        every = min(max(self.idle_timeout_s / 4, 0.05), 10.0)
        while True:
            time.sleep(every)
            self.close_idle()

    def _close(self, stream_id, why: str, only_if_idle=False) -> None:
        """Forget a stream. Its Session is closed now if no call holds it, else by its last call."""
        with self.lock:
            st = self.streams.get(stream_id) if isinstance(stream_id, str) else None
            if st is None or (only_if_idle and st.pending):      # a call came in since close_idle looked
                return
            del self.streams[stream_id]
            st.closed = why
            self.gone[stream_id] = why
            while len(self.gone) > 64 * self.max_streams:
                self.gone.popitem(last=False)
            idle = not st.pending
        if idle:
            st.session.close()
        else:
            with st.turn:               # held only between calls, never while one runs
                st.turn.notify_all()    # its waiting calls answer "closed"

    def _call(self, stream_id, seq, work) -> dict:
        if type(seq) is not int:
            return {"error": "invalid", "message": f"seq must be an int, got {type(seq).__name__}"}
        with self.lock:
            st = self.streams.get(stream_id) if isinstance(stream_id, str) else None
            if st is None:
                why = self.gone.get(stream_id) if isinstance(stream_id, str) else None
                return {"error": "closed", "message": why} if why else {"error": "refused"}
            if seq in st.pending or seq < st.next_seq:
                return {"error": "order", "message": f"push {seq} was sent twice"}
            if seq >= st.next_seq + PUSH_WINDOW:            # so a stream holds at most PUSH_WINDOW threads
                return {"error": "order", "message": f"push {seq} came too early: at most {PUSH_WINDOW} pushes of "
                                                     f"a stream in flight (the replica is at push {st.next_seq})"}
            st.pending.add(seq)
        try:
            with st.turn:
                if not st.turn.wait_for(lambda: st.next_seq == seq or st.closed, timeout=self.order_timeout_s):
                    return {"error": "order", "message": f"push {seq} waited {self.order_timeout_s:g} s for push "
                                                         f"{st.next_seq}, which did not come"}
            if st.closed:
                return {"error": "closed", "message": st.closed}
            # Our turn: no other call of this stream runs until next_seq moves on, so the Session
            # is used outside the condition's lock (close() can wake the waiting calls meanwhile).
            try:
                return work(st)
            finally:
                with st.turn:
                    st.next_seq += 1
                    st.turn.notify_all()
        finally:
            with self.lock:
                st.pending.discard(seq)
                st.last_used = time.monotonic()      # the whole call counts as use, not only its start
                last_out = bool(st.closed) and not st.pending
            if last_out:
                st.session.close()

    def push(self, stream_id, seq, frames) -> dict:
        def work(st):
            why = check_frames(frames, self.model.spec.input_size, self.max_push_frames)
            if why:
                return {"error": "bad", "message": why}
            return {"frames": st.session.push(frames)}
        return self._call(stream_id, seq, work)

    def flush(self, stream_id, seq) -> dict:
        def work(st):
            out = st.session.flush()
            self._close(stream_id, "the stream was flushed")
            return {"frames": out}
        return self._call(stream_id, seq, work)


def actor_class():
    """StreamReplica as a Ray actor class whose CONTROL_METHODS run on CONTROL_THREADS threads of
    their own, so that the router's and the clients' control calls are answered however many
    pushes wait. Give the actor max_concurrency=max_streams * PUSH_WINDOW: the threads of the
    pushes, every stream its window."""
    import ray
    for name in CONTROL_METHODS:
        ray.method(concurrency_group="control")(getattr(StreamReplica, name))
    return ray.remote(concurrency_groups={"control": CONTROL_THREADS})(StreamReplica)
