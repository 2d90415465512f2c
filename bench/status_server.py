"""A cheap HTTPS status server for the triggerer benchmark (not the emulator: it only answers polls).

It speaks just enough of the RunComfy Model API for a poll loop --
``GET /v1/requests/{id}/status`` and ``GET /v1/requests/{id}/result`` -- plus
``GET /sensor/{id}`` for Airflow's ``HttpSensorTrigger`` (404 until the job is
done, then 200) and ``GET /_bench/stats`` (TCP connections opened, requests by
endpoint). A job's id carries the wall-clock times at which it was submitted
and at which it completes (``<anything>-<submitted_ms>-<done_at_ms>``): it is
``in_queue`` for the first half (its ``queue_position`` moving every tenth of a
second, as behind a long queue), ``in_progress`` for the second, then done. So
the server keeps no state per job and the benchmark knows exactly when each job
flipped.

Raw asyncio HTTP/1.1 with keep-alive (on uvloop when installed) keeps it far
cheaper than any client under test, so it is not the bottleneck. It listens
on 127.0.0.1 only, with a certificate issued by a throwaway CA (``trustme``)
whose PEM it writes next to the ready file, so clients verify TLS as usual.

Run: ``python bench/status_server.py --ready-file /tmp/srv.json [--port 0] [--cpu 0]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import trustme

HOST = "127.0.0.1"
_HEADER_END = b"\r\n\r\n"


class Stats:
    """What the server saw since it started; the benchmark reads deltas around each strategy.

    Polls (``/status`` and ``/sensor`` requests) are also counted per second, with the gap
    since the same job's previous poll: a watcher keeping its schedule polls every
    interval, one that falls behind leaves longer gaps.
    """

    def __init__(self) -> None:
        self.connections_opened = 0
        self.connections_open = 0
        self.requests: dict[str, int] = {"status": 0, "result": 0, "sensor": 0, "other": 0}
        self.last_poll: dict[str, float] = {}
        self.per_second: dict[int, list[float]] = {}  # second -> [polls, gaps counted, sum of gaps]

    def poll(self, request_id: str, now: float, finished: bool) -> None:
        bucket = self.per_second.setdefault(int(now), [0, 0, 0.0])
        bucket[0] += 1
        last = self.last_poll.pop(request_id, None) if finished else self.last_poll.get(request_id)
        if last is not None:
            bucket[1] += 1
            bucket[2] += now - last
        if not finished:
            self.last_poll[request_id] = now

    def to_dict(self) -> dict[str, object]:
        return {
            "connections_opened": self.connections_opened,
            "connections_open": self.connections_open,
            "requests": dict(self.requests),
            "per_second": self.per_second,
            "time": time.time(),
        }


def _times(request_id: str) -> tuple[float, float] | None:
    """The submit and completion times carried in a job id, in seconds; None if it carries none."""
    parts = request_id.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return int(parts[1]) / 1000, int(parts[2]) / 1000


def _state(times: tuple[float, float], now: float) -> tuple[str, int | None]:
    """The job's state word (as ``/result`` says it) and its queue position, at ``now``."""
    submitted, done_at = times
    if now >= done_at:
        return "succeeded", None
    queued_until = (submitted + done_at) / 2
    if now < queued_until:
        return "in_queue", int((queued_until - now) * 10)
    return "in_progress", None


def _response(status: str, body: bytes, keep_alive: bool) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
        % (status.encode(), len(body), connection)
    ) + body


def answer(path: str, stats: Stats) -> tuple[str, bytes]:
    """The HTTP status line and JSON body for one GET."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if len(parts) == 4 and parts[:2] == ["v1", "requests"] and parts[3] in ("status", "result"):
        request_id, endpoint = parts[2], parts[3]
        stats.requests[endpoint] += 1
        times = _times(request_id)
        if times is None:
            return "404 Not Found", b'{"error_code": 404001, "error_message": "request not found"}'
        now = time.time()
        state, position = _state(times, now)
        if endpoint == "status":
            stats.poll(request_id, now, finished=state == "succeeded")
        rid = request_id.encode()
        if state == "succeeded" and endpoint == "result":
            return "200 OK", (
                b'{"request_id": "%s", "status": "succeeded", "output": {"image": "https://%s/files/%s/0.png"},'
                b' "created_at": "2025-01-01T00:00:00.000Z", "finished_at": "2025-01-01T00:00:01.000Z"}'
                % (rid, HOST.encode(), rid)
            )
        if state == "succeeded":
            return "200 OK", b'{"request_id": "%s", "status": "completed"}' % rid
        if position is not None and endpoint == "status":
            return "200 OK", b'{"request_id": "%s", "status": "in_queue", "queue_position": %d}' % (
                rid,
                position,
            )
        return "200 OK", b'{"request_id": "%s", "status": "%s"}' % (rid, state.encode())
    if len(parts) == 2 and parts[0] == "sensor":
        stats.requests["sensor"] += 1
        times = _times(parts[1])
        now = time.time()
        finished = times is not None and now >= times[1]
        stats.poll(parts[1], now, finished)
        if finished:
            return "200 OK", b'{"status": "completed"}'
        return "404 Not Found", b'{"status": "in_progress"}'
    stats.requests["other"] += 1
    if parts == ["_bench", "stats"]:
        return "200 OK", json.dumps(stats.to_dict()).encode()
    return "404 Not Found", b'{"error_code": 404001, "error_message": "no such path"}'


class _Connection(asyncio.Protocol):
    """One client connection: parse request heads, answer each in order, keep the connection alive."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buffer = b""
        self.transport: Any = None  # an asyncio or uvloop (SSL) transport

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.stats.connections_opened += 1
        self.stats.connections_open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.connections_open -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(_HEADER_END)
            if end < 0:
                if len(self.buffer) > 65536:
                    self.transport.close()
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.split(b"\r\n")
            try:
                method, target, _version = lines[0].decode("latin-1").split(" ", 2)
            except ValueError:
                self.transport.close()
                return
            lowered = [line.lower() for line in lines[1:]]
            keep_alive = b"connection: close" not in lowered
            length = next((int(line[15:]) for line in lowered if line.startswith(b"content-length:")), 0)
            self.buffer = self.buffer[length:]  # bodies are ignored (the benchmark only GETs)
            if method != "GET":
                status, body = "405 Method Not Allowed", b"{}"
            else:
                status, body = answer(target, self.stats)
            self.transport.write(_response(status, body, keep_alive))
            if not keep_alive:
                self.transport.close()


def make_certificates(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A throwaway CA and a certificate for 127.0.0.1; returns the server context and the CA's PEM file."""
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = directory / "bench-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file


async def serve(port: int, ready_file: Path, max_seconds: float) -> None:
    stats = Stats()
    context, ca_file = make_certificates(ready_file.parent)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(stats), HOST, port, ssl=context, backlog=4096, reuse_address=True
    )
    bound_port = server.sockets[0].getsockname()[1]
    ready = {"base_url": f"https://{HOST}:{bound_port}", "ca_file": str(ca_file), "pid": os.getpid()}
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(ready))
    tmp.replace(ready_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # Bounded in time: a benchmark that lost its orchestrator still ends.
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        pass
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long regardless")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    runner(serve(args.port, args.ready_file, args.max_seconds))


if __name__ == "__main__":
    main()
