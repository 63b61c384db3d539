"""Live streams as sessions on Ray actors, reachable from any process of the cluster.

  python -m runtime.serve --engine engines/1080p.plan --replicas 4            (a local cluster)
  python -m runtime.serve --engine B --replicas 8 --address auto              (a running cluster)
  python -m runtime.stream --serve auto in.mp4 -o out.mp4                     (a client, same CLI)
  python -m runtime.serve --engine B --replicas 4 --listen 0.0.0.0:50051 --tls-cert C --tls-key K
  python -m runtime.stream --serve grpcs://host:50051 --tls-ca ca.pem in.mp4 -o out.mp4   (outside the cluster)

    client = runtime.serve.connect("auto")        # or "ray://head:10001", "grpcs://host:50051"
    stream = client.open()                        # runtime.serve.Busy when every replica is full
    out = stream.push(frames)                     # uint8 [T, H, W, 3] in -> restored frames, in order
    out = stream.flush()                          # end of stream: the rest

A replica is an actor holding one loaded model and up to --max-streams Sessions; a stream lives on
one replica for its whole life (its ReAE states and chunk history are there). When its replica
dies, the stream's next call raises StreamLost; other streams go on. A router (a named, detached
actor) opens streams on the least loaded replica and replaces dead ones.

Isolation: a stream is addressed by an unguessable id (secrets.token_urlsafe(16)), which is its
only key; opening a stream needs the service token. Wrong ids and tokens get "refused", no detail.
Each push is checked (dtype, frame size, count) against the bundle before anything is queued; a
bad push is refused and the stream goes on. Ray's own endpoints have no authentication that
protects them from the network; keep them on a private one (README). Clients outside the cluster
use the gRPC endpoint (--listen; endpoint.py, restorer.proto): TLS, tokens, limits, back-pressure.
"""
from .client import Client, RemoteModel, ServedSession, Stream, connect
from .common import NAMESPACE, SERVICE, TOKEN_ENV, BadPush, Busy, Refused, ServeError, StreamLost, check_frames
from .router import start_service

__all__ = ["BadPush", "Busy", "Client", "NAMESPACE", "Refused", "RemoteModel", "SERVICE", "ServeError",
           "ServedSession", "Stream", "StreamLost", "TOKEN_ENV", "check_frames", "connect", "start_service"]
