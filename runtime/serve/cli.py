"""python -m runtime.serve (runtime/serve/__main__.py runs main()): start the router and its replicas, serve until Ctrl-C / SIGTERM."""
import argparse
import os
import signal
import sys
import threading

from . import __doc__ as DOC
from .common import DEFAULT_TOKEN_FILE, SERVICE, TOKEN_ENV, ServeError
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
    a = p.parse_args(argv)
    for flag, value in (("--replicas", a.replicas), ("--max-streams", a.max_streams)):
        if value < 1:
            p.error(f"{flag} must be at least 1, got {value}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import ray
    from ..batch import connect_ray
    from ..errors import RuntimeSetupError
    try:
        token = service_token(a.token_file)
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        joined = connect_ray(a.address)
    except RuntimeSetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    router = None
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
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
    finally:
        if router is not None:           # detached: it would outlive us in a shared cluster
            ray.get(router.shutdown.remote())
            ray.kill(router)
        if joined:
            ray.shutdown()
    return 0

