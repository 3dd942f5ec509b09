"""What TLS costs per connection, and what certificate rotation costs and how fast it takes effect.

    .venv/bin/python bench/bench_tls.py [--connections 200]

Against real `cnnserve serve --echo` processes (plaintext, TLS, mutual TLS; certificates from
scripts/make-tls-certs.sh), one new connection and one Classify call at a time:
- connect: a new channel, its handshake and a first call, median over `--connections` connections;
- rotation: the server's certificate files are replaced (renamed over, as a renewal does) while a channel
  stays open; how long until a new TLS connection presents the new certificate, whether the old channel
  still calls, and what the server's per-handshake look at the files costs (in this process, same code).
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSIFY = "/cnnserve.v1.InferenceService/Classify"


def make_certs(folder: Path) -> Path:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-tls-certs.sh"), str(folder)], check=True, capture_output=True
    )
    return folder


def start(tmp: Path, name: str, flags: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / f"{name}.port"
    command = [sys.executable, "-m", "cnnserve", "--log-level", "WARNING", "serve", "--repo", str(tmp)]
    command += [
        "--echo",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "1",
        "--port-file",
        str(port_file),
    ]
    process = subprocess.Popen([*command, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not port_file.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server {name} did not start")
        time.sleep(0.05)
    return process, int(port_file.read_text())


def connect_and_call(port: int, credentials: object | None, request: bytes) -> float:
    import grpc

    start = time.perf_counter()
    address = f"127.0.0.1:{port}"
    channel = (
        grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    )
    with channel:
        channel.unary_unary(CLASSIFY)(request, timeout=10)
    return time.perf_counter() - start


def served_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to the port is given."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(pem_file: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()

    import grpc

    from cnnserve.protos import inference_pb2
    from cnnserve.serving.security.tls import TlsFiles, TlsWatcher

    request = inference_pb2.ClassifyRequest(model="echo", images=[inference_pb2.Image(encoded=b"x" * 300)])
    payload = request.SerializeToString()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as name:
        tmp = Path(name)
        certs = make_certs(tmp / "certs")
        ca = (certs / "ca.crt").read_bytes()
        client = ((certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes())
        tls = ["--tls-cert", str(certs / "server.crt"), "--tls-key", str(certs / "server.key")]
        systems = {
            "plaintext": ([], None),
            "TLS": (tls, grpc.ssl_channel_credentials(ca)),
            "mutual TLS": (
                [*tls, "--tls-client-ca", str(certs / "ca.crt")],
                grpc.ssl_channel_credentials(ca, *client),
            ),
        }
        servers = {
            system: start(tmp, system.replace(" ", "-"), flags) for system, (flags, _) in systems.items()
        }
        try:
            print(f"# new connection + first Classify call, median of {args.connections}, one at a time")
            print("| server | connect + call ms | vs plaintext |")
            print("|---|---|---|")
            medians: dict[str, float] = {}
            for system, (_, credentials) in systems.items():
                port = servers[system][1]
                for _ in range(10):
                    connect_and_call(port, credentials, payload)
                times = [connect_and_call(port, credentials, payload) for _ in range(args.connections)]
                medians[system] = statistics.median(times)
                ratio = medians[system] / medians["plaintext"]
                print(f"| {system} | {medians[system] * 1e3:.2f} | {ratio:.2f}x |")

            port = servers["TLS"][1]
            old = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca))
            old.unary_unary(CLASSIFY)(payload, timeout=10)
            assert served_certificate(port) == der_of(certs / "server.crt")
            renewed = make_certs(tmp / "renewed")
            replaced = time.perf_counter()
            for file in ("server.key", "server.crt"):
                os.replace(renewed / file, certs / file)
            seen_new = served_certificate(port) == der_of(certs / "server.crt")
            delay = time.perf_counter() - replaced
            old_ok = old.unary_unary(CLASSIFY)(payload, timeout=10) is not None
            fresh = connect_and_call(
                port, grpc.ssl_channel_credentials((renewed / "ca.crt").read_bytes()), payload
            )
            old.close()
            watcher = TlsWatcher(TlsFiles(certs / "server.crt", certs / "server.key"))
            check_us = timeit.timeit(watcher.current, number=20000) / 20000 * 1e6

            def touch_and_reload() -> None:
                os.utime(certs / "server.crt")
                watcher.current()

            reload_ms = timeit.timeit(touch_and_reload, number=200) / 200 * 1e3
            print("\n# rotation: files replaced under a running TLS server (renamed over, as a renewal does)")
            print(
                f"- the first new connection after the replacement got the {'new' if seen_new else 'OLD'} "
                f"certificate ({delay * 1e3:.1f} ms after it, its handshake included)"
            )
            print(
                f"- a call on the connection opened before: {'OK' if old_ok else 'FAILED'} "
                "(it trusts the old CA only)"
            )
            print(f"- a new connection trusting only the new CA: OK in {fresh * 1e3:.1f} ms")
            print(f"- per handshake, the look at the files when unchanged: {check_us:.1f} us")
            print(f"- reading and checking changed files (once per change): {reload_ms:.2f} ms")
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
