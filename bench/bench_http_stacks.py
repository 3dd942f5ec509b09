"""Which HTTP/1.1 server stack costs the least per request on cnnserve's event loop, measured side by side.

    .venv/bin/pip install aiohttp httptools h11 uvicorn starlette psutil
    .venv/bin/python bench/bench_http_stacks.py [--duration 5]

The Open Inference Protocol's HTTP endpoint shares the gRPC server's process, batcher and asyncio loop,
so its stack must run as coroutines/protocols on that loop. Each candidate serves one no-work endpoint
(`POST /v2/models/m/infer`: read the whole body, answer a fixed 150-byte JSON) on the loop cnnserve's
server runs (serving's metered loop), in a process of its own; a grpc.aio generic echo on the same loop
is the reference for the gRPC side. One load generator drives them all (asyncio raw sockets in its own
process, keep-alive, pre-built requests, responses read by Content-Length): 8 connections x 200,704-byte
bodies (64 MNIST images as FP32, binary) and 64 connections x 3,136-byte bodies (one image). Reported per
stack: requests/s, and the server's CPU per request (user+system time of its process over the requests
answered), which is the overhead itself, free of the load generator's share of the two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STACKS = ("httptools", "h11", "aiohttp", "uvicorn+starlette", "grpc.aio echo")
PATH = b"/v2/models/m/infer"
ANSWER = b'{"model_name":"m","model_version":"1","outputs":[{"name":"probabilities","datatype":"FP32","shape":[1,10],"data":[0,0,0,0,0,0,0,0,0,1]}]}'  # noqa: E501
LOADS = ((8, 64 * 28 * 28 * 4), (64, 28 * 28 * 4))


def _response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


# ------------------------------------------------------------------------------------------------
# Servers: each serves POST /v2/models/m/infer on the running loop until cancelled
# ------------------------------------------------------------------------------------------------


class HttptoolsProtocol(asyncio.Protocol):
    """A hand-written HTTP/1.1 keep-alive server on asyncio's Protocol with httptools' C parser."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        self.body = []
        assert self.transport is not None
        if self.url == PATH and body:
            self.transport.write(_response(ANSWER))
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


class H11Protocol(asyncio.Protocol):
    """The same server with h11's pure-Python state machine."""

    def __init__(self) -> None:
        import h11

        self.h11 = h11
        self.conn = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self.target = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        h11 = self.h11
        assert self.transport is not None
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self.conn.our_state is h11.DONE:
                    self.conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self.target = event.target
            elif isinstance(event, h11.Data):
                self.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.body = []
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]
                out = self.conn.send(h11.Response(status_code=200, headers=headers))
                out += self.conn.send(h11.Data(data=ANSWER)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


async def serve_protocol(factory: type[asyncio.Protocol]) -> int:
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]


async def serve_aiohttp() -> int:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(PATH.decode(), infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def serve_uvicorn() -> int:
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request: Request) -> Response:
        await request.body()
        return Response(ANSWER, media_type="application/json")

    app = Starlette(routes=[Route(PATH.decode(), infer, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http="httptools", lifespan="off", access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    return sock.getsockname()[1]


async def serve_grpc_echo() -> int:
    import grpc

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return ANSWER

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(echo)},
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    asyncio.get_running_loop().create_task(server.wait_for_termination())
    return port


async def _serve(stack: str) -> None:
    if stack == "httptools":
        port = await serve_protocol(HttptoolsProtocol)
    elif stack == "h11":
        port = await serve_protocol(H11Protocol)
    elif stack == "aiohttp":
        port = await serve_aiohttp()
    elif stack == "uvicorn+starlette":
        port = await serve_uvicorn()
    else:
        port = await serve_grpc_echo()
    print(port, flush=True)
    await asyncio.Event().wait()


def server_main(stack: str) -> None:
    sys.path.insert(0, str(ROOT))
    from cnnserve.serving import loop_load

    with asyncio.Runner(loop_factory=loop_load.new_event_loop) as runner:
        runner.run(_serve(stack))


# ------------------------------------------------------------------------------------------------
# Load generator: C keep-alive connections, one request in flight each
# ------------------------------------------------------------------------------------------------


async def _http_client(port: int, request: bytes, stop: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.perf_counter() < stop:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        counts[0] += 1
    writer.close()


async def _grpc_client(port: int, body: bytes, stop: float, counts: list[int]) -> None:
    import grpc

    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        while time.perf_counter() < stop:
            await call(body)
            counts[0] += 1


async def _load(stack: str, port: int, clients: int, size: int, seconds: float) -> float:
    body = os.urandom(size)
    request = (
        b"POST " + PATH + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: " + str(size).encode() + b"\r\n\r\n" + body
    )
    counts = [0]
    stop = time.perf_counter() + seconds
    if stack == "grpc.aio echo":
        clients_ = [_grpc_client(port, body, stop, counts) for _ in range(clients)]
    else:
        clients_ = [_http_client(port, request, stop, counts) for _ in range(clients)]
    await asyncio.gather(*clients_)
    return counts[0]


def load_main(stack: str, port: int, clients: int, size: int, seconds: float) -> None:
    print(asyncio.run(_load(stack, port, clients, size, seconds)), flush=True)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------


def measure(stack: str, duration: float, warmup: float) -> list[tuple[int, int, float, float]]:
    import psutil

    server = subprocess.Popen([sys.executable, __file__, "--serve", stack], stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        process = psutil.Process(server.pid)
        for clients, size in LOADS:
            base = [sys.executable, __file__, "--load", stack, str(port), str(clients), str(size)]
            subprocess.run([*base, str(warmup)], check=True, capture_output=True)
            before = process.cpu_times()
            start = time.perf_counter()
            done = subprocess.run([*base, str(duration)], check=True, capture_output=True, text=True)
            elapsed = time.perf_counter() - start
            after = process.cpu_times()
            requests = int(done.stdout)
            cpu = (after.user - before.user) + (after.system - before.system)
            rows.append((clients, size, requests / elapsed, cpu / requests * 1e6))
    finally:
        server.terminate()
        server.wait()
    return rows


def main(argv: list[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--stacks", nargs="+", default=list(STACKS), choices=STACKS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        server_main(args.serve)
        return 0
    if args.load:
        stack, port, clients, size, seconds = args.load
        load_main(stack, int(port), int(clients), int(size), float(seconds))
        return 0
    print(f"{'stack':<20} {'clients x body':>16} {'requests/s':>11} {'server CPU/request':>19}")
    for stack in args.stacks:
        for clients, size, rate, cpu_us in measure(stack, args.duration, args.warmup):
            print(f"{stack:<20} {f'{clients} x {size:,} B':>16} {rate:>11,.0f} {cpu_us:>16,.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
