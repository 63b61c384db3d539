"""python -m runtime.serve (runtime/serve/__main__.py runs main()): start the router and its replicas, serve until Ctrl-C / SIGTERM."""
import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from . import __doc__ as DOC
from .common import DEFAULT_TOKEN_FILE, SERVICE, TOKEN_ENV, ServeError, read_tokens_file
from .router import service_token, start_service

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.serve", description=DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, help="bundle file or export folder, readable on every node")
    p.add_argument("--backend", help="tensorrt, onnxruntime or torch (default: from the bundle)")
    p.add_argument("--replicas", type=int, default=1, help="actors, one loaded model each (default 1)")
    p.add_argument("--address", help="Ray cluster: auto, ray://HOST:10001 (default: a private local cluster)")
    p.add_argument("--gpus-per-replica", type=float, help="Ray num_gpus per replica (default: 1 with GPUs, else 0)")
    p.add_argument("--cpus-per-replica", type=float, default=1, help="Ray num_cpus per replica (default 1)")
    p.add_argument("--max-streams", type=int, default=4, help="streams per replica before 'busy' (default 4)")
    p.add_argument("--max-push-frames", type=int, help="frames per push (default 4 chunks)")
    p.add_argument("--idle-timeout", type=float, default=600, help="seconds before an idle stream is closed")
    p.add_argument("--name", default=SERVICE, help=f"service name in the cluster (default {SERVICE})")
    p.add_argument("--token-file", default=str(DEFAULT_TOKEN_FILE),
                   help=f"where the service token is read from (a file only you can read: chmod 600), or "
                        f"written to if missing (default {DEFAULT_TOKEN_FILE}; {TOKEN_ENV} overrides)")
    g = p.add_argument_group("gRPC endpoint (clients outside the Ray cluster; restorer.proto)")
    g.add_argument("--listen", metavar="HOST:PORT", help="serve streams over gRPC here (e.g. 127.0.0.1:50051; "
                   "an address other than loopback needs --tls-cert/--tls-key)")
    g.add_argument("--tls-cert", help="the endpoint's certificate chain (PEM)")
    g.add_argument("--tls-key", help="its private key (PEM; a file only you can read: chmod 600)")
    g.add_argument("--tls-client-ca", help="clients must show a certificate signed by this CA (PEM)")
    g.add_argument("--insecure-plaintext", action="store_true",
                   help="INSECURE: serve without TLS on an address other than loopback (tokens and frames in the "
                        "clear: only behind a TLS-terminating proxy on a network you trust)")
    g.add_argument("--client-tokens", metavar="FILE", help="tokens the endpoint accepts, one per line (one per "
                   "client; mode 600) (default: the service token)")
    g.add_argument("--max-endpoint-streams", type=int, help="streams through the endpoint at once (default: "
                   "replicas x max-streams)")
    g.add_argument("--max-streams-per-token", type=int, help="streams of one token at once (default: "
                   "--max-endpoint-streams)")
    a = p.parse_args(argv)
    for flag, value in (("--replicas", a.replicas), ("--max-streams", a.max_streams),
                        ("--max-endpoint-streams", a.max_endpoint_streams),
                        ("--max-streams-per-token", a.max_streams_per_token)):
        if value is not None and value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    try:
        check_endpoint_args(a)
    except ValueError as e:
        p.error(str(e))
    return a


def check_endpoint_args(a: argparse.Namespace) -> None:
    """The gRPC endpoint's flags, before Ray starts: plaintext on a network needs --insecure-plaintext."""
    from .endpoint import is_loopback, split_listen
    endpoint_flags = [f for f, v in (("--tls-cert", a.tls_cert), ("--tls-key", a.tls_key),
                                     ("--tls-client-ca", a.tls_client_ca),
                                     ("--insecure-plaintext", a.insecure_plaintext),
                                     ("--client-tokens", a.client_tokens),
                                     ("--max-endpoint-streams", a.max_endpoint_streams),
                                     ("--max-streams-per-token", a.max_streams_per_token)) if v]
    if not a.listen:
        if endpoint_flags:
            raise ValueError(f"{endpoint_flags[0]} is for the gRPC endpoint: add --listen HOST:PORT")
        return
    host, _ = split_listen(a.listen)
    if (a.tls_cert is None) != (a.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if a.tls_client_ca and not a.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (client certificates are part of TLS)")
    if not a.tls_cert and not is_loopback(host) and not a.insecure_plaintext:
        raise ValueError(f"--listen {a.listen} is not a loopback address: tokens and frames would cross the network "
                         f"in the clear. Give --tls-cert and --tls-key, or (behind a TLS proxy on a network you "
                         f"trust) --insecure-plaintext")


def endpoint_tls(a: argparse.Namespace):
    """The TLS files read (the key must be private, as the token is), or None."""
    from .common import read_file, read_private_file
    from .endpoint import TLS
    if not a.tls_cert:
        return None
    return TLS(cert=read_file(a.tls_cert, "--tls-cert"), key=read_private_file(Path(a.tls_key), "the TLS key"),
               client_ca=read_file(a.tls_client_ca, "--tls-client-ca") if a.tls_client_ca else None)


def main(argv=None) -> int:
    a = parse_args(argv)
    import ray
    from ..batch import connect_ray
    from ..errors import RuntimeSetupError
    try:
        token = service_token(a.token_file)
        tls = endpoint_tls(a) if a.listen else None
        client_tokens = read_tokens_file(Path(a.client_tokens)) if a.client_tokens else [token]
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        joined = connect_ray(a.address)
    except RuntimeSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    router = endpoint = None
    try:
        resources = ray.cluster_resources()
        gpus = a.gpus_per_replica if a.gpus_per_replica is not None else (1 if resources.get("GPU") else 0)
        if gpus and not resources.get("GPU"):
            print("error: --gpus-per-replica > 0 but the Ray cluster has no GPU", file=sys.stderr)
            return 2
        try:
            router = start_service(a.engine, replicas=a.replicas, token=token, gpus=gpus, cpus=a.cpus_per_replica,
                                   max_streams=a.max_streams, max_push_frames=a.max_push_frames,
                                   idle_timeout_s=a.idle_timeout, backend=a.backend, name=a.name)
        except ServeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        where = a.address or ray.get_runtime_context().gcs_address
        print(f"serving {a.engine} on {a.replicas} replica(s) as {a.name!r} in the Ray cluster at {where}; "
              f"clients: runtime.serve.connect({where!r}) or python -m runtime.stream --serve {where} ...; "
              f"token in {a.token_file if not os.environ.get(TOKEN_ENV) else TOKEN_ENV}. Ctrl-C stops.",
              file=sys.stderr, flush=True)
        if a.listen:
            from .endpoint import Endpoint, Limits
            streams = a.max_endpoint_streams or a.replicas * a.max_streams
            limits = Limits(max_streams=streams, max_streams_per_token=a.max_streams_per_token or streams,
                            idle_timeout_s=a.idle_timeout)
            try:
                endpoint = Endpoint(router, listen=a.listen, tokens=client_tokens, service_token=token, limits=limits,
                                    tls=tls)
            except OSError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            how = ("TLS" + (", client certificates required" if tls.client_ca else "")) if tls else "PLAINTEXT"
            print(f"gRPC endpoint listening on {endpoint.address} ({how}; {len(client_tokens)} token(s), "
                  f"{limits.max_streams} streams, {limits.max_streams_per_token} per token)",
                  file=sys.stderr, flush=True)
            if not tls and a.insecure_plaintext:
                print("WARNING: --insecure-plaintext: tokens and frames cross the network in the clear",
                      file=sys.stderr, flush=True)
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
    finally:
        if endpoint is not None:
            endpoint.stop()
        if router is not None:           # detached: it would outlive us in a shared cluster
            ray.get(router.shutdown.remote())
            ray.kill(router)
        if joined:
            ray.shutdown()
    return 0

