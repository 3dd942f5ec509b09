"""A health probe for containers: `python -m cnnserve.serving.grpc.healthcheck [--address H:P] [--service S]`.

Exits 0 only when the server (or the named model) answers SERVING; 1 otherwise, with the reason on stderr.
The address defaults to localhost and CNNSERVE_PORT (the server's default port otherwise), so a Docker
HEALTHCHECK needs no arguments. Only gRPC is imported: a probe that runs every few seconds stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys

from cnnserve.serving.settings import DEFAULT_PORT


def main(argv: list[str] | None = None) -> int:
    port = os.environ.get("CNNSERVE_PORT") or str(DEFAULT_PORT)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--address", default=f"localhost:{port}", help="server address (default: %(default)s)"
    )
    parser.add_argument("--service", default="", help="model name to check (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
