"""A health probe for containers: `python -m cnnserve.serving.grpc.healthcheck [--address H:P] [--service S]`.

Exits 0 only when the server (or the named model) answers SERVING; 1 otherwise, with the reason on stderr.
The address defaults to localhost and CNNSERVE_HEALTH_PORT (the server's plaintext health-only port, which
works whatever TLS the main port requires), else CNNSERVE_PORT (the server's default port otherwise), so a
Docker HEALTHCHECK needs no arguments. To check a TLS port, give the client flags (--tls-ca, ...). Only
gRPC is imported: a probe that runs every few seconds stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys

from cnnserve.serving.security import client_credentials
from cnnserve.serving.settings import DEFAULT_PORT


def default_address() -> str:
    port = os.environ.get("CNNSERVE_HEALTH_PORT") or os.environ.get("CNNSERVE_PORT") or str(DEFAULT_PORT)
    return f"localhost:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=default_address(), help="server address (default: %(default)s)")
    parser.add_argument("--service", default="", help="model name to check (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")
    client_credentials.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        security = client_credentials.from_args(args)
    except client_credentials.ClientSecurityError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from cnnserve.serving.grpc.credentials import channel

    with channel(args.address, security, options=[]) as connection:
        try:
            response = health_pb2_grpc.HealthStub(connection).Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
                metadata=security.metadata() or None,
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
