"""What preparing one input costs the worker: the figures of docs/inputs.md ("What it costs").

Against servers on 127.0.0.1, so this is the provider's own overhead, not a network's:

* a pre-flight ``HEAD`` answered 200 on a kept-alive connection;
* a host that refuses ``HEAD`` (405), then a ranged ``GET``;
* an ``application/octet-stream`` answer (an S3 pre-signed URL's): ``HEAD``, then a ranged
  ``GET`` for the magic bytes;
* one task's whole preparation of one https-style input (``prepare_input``: a new pre-flight
  client each time, its TLS context included);
* an ``s3://`` path (metadata, a 16-byte read, signing) against moto's S3 server;
* a local file of 1 MB and of 6 MiB inlined as a ``data:`` URI.

Each is run ``--runs`` times after a warm-up; the median is printed, in ms: the wall time,
and the CPU time of this process (all its threads). The servers run in another process, so
the CPU is the provider's alone; it is also far less disturbed than the wall time by other
work on the machine, which a shared test machine has plenty of.

    .venv/bin/python bench/preflight_costs.py [--runs 50]

A benchmark, not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 64

#: path -> (status of HEAD, headers, body of GET)
ROUTES: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/ok.png": (200, {"Content-Type": "image/png", "Content-Length": "123456"}, PNG),
    "/nohead.png": (405, {"Content-Type": "image/png"}, PNG),
    "/octet.png": (200, {"Content-Type": "application/octet-stream"}, PNG),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections, as a CDN keeps them
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def log_message(self, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        status, headers, body = ROUTES.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", "0" if status == 405 else str(len(body)))
        self.end_headers()

    def do_GET(self) -> None:
        _, headers, body = ROUTES.get(self.path, (404, {}, b""))
        self.send_response(206 if self.headers.get("Range") else 200)
        for name, value in headers.items():
            if name != "Content-Length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def median_ms(work: Callable[[], Any], runs: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``work()``."""
    for _ in range(3):
        work()
    walls, cpus = [], []
    for _ in range(runs):
        started, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def serve(ready: Any) -> None:
    """The HTTP server and moto's S3 server, in their own process."""
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ready.put((server.server_address[1], moto.get_host_and_port()[1]))
    server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="runs of each, median shown (default 50)")
    args = parser.parse_args()
    if not 1 <= args.runs <= 1000:
        parser.error("--runs is 1..1000 (bounded runs)")
    sys.path.insert(0, str(ROOT))
    from airflow_provider_runcomfy.sources import Preflight, prepare_input

    ready: Any = multiprocessing.Queue()
    servers = multiprocessing.Process(target=serve, args=(ready,), daemon=True)
    servers.start()
    http_port, s3_port = ready.get(timeout=60)
    base = f"http://127.0.0.1:{http_port}"
    rows: list[tuple[str, tuple[float, float]]] = []
    try:
        # The server's own base URL as the API's: the URL rules then let the worker fetch it.
        with Preflight(api_base_url=base) as preflight:
            for label, path in (
                ("HEAD 200, kept-alive connection", "/ok.png"),
                ("HEAD 405, then a ranged GET", "/nohead.png"),
                ("octet-stream: HEAD, then a ranged GET", "/octet.png"),
            ):
                result = preflight.check("image_url", f"{base}{path}", "image")
                assert result.warning is None, result.warning
                url = f"{base}{path}"
                rows.append(
                    (label, median_ms(lambda u=url: preflight.check("image_url", u, "image"), args.runs))
                )
        flux = {"prompt": "p", "image_url": f"{base}/ok.png"}
        rows.append(
            (
                "one task's whole preparation (new client, TLS context)",
                median_ms(
                    lambda: prepare_input(FLUX, flux, api_base_url=base, mask=lambda _: None), args.runs
                ),
            )
        )
        with tempfile.TemporaryDirectory() as tmp:
            for label, size in (
                ("local 1 MB file, inlined", 1_000_000),
                ("local 6 MiB file, inlined", 6 << 20),
            ):
                path = Path(tmp) / f"{size}.png"
                path.write_bytes(PNG + os.urandom(size - len(PNG)))
                local = {"prompt": "p", "image_url": str(path)}
                rows.append(
                    (label, median_ms(lambda i=local: prepare_input(FLUX, i, mask=lambda _: None), args.runs))
                )
        rows.append(("s3:// path against moto (look-up, 16 bytes, signing)", s3_cost(s3_port, args.runs)))
    finally:
        servers.kill()

    print(f"median of {args.runs} runs each, servers on 127.0.0.1 in another process")
    print(f"{'':<56}  {'wall ms':>8}  {'CPU ms':>7}")
    for label, (wall, cpu) in rows:
        print(f"{label:<56}: {wall:8.2f}  {cpu:7.2f}")
    return 0


def s3_cost(port: int, runs: int) -> tuple[float, float]:
    """``prepare_input`` of an ``s3://`` path on moto's S3 server (as tests/s3_fixture.py points s3fs at it)."""
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "moto-testing-key",
            "AWS_SECRET_ACCESS_KEY": "moto-testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    import s3fs

    from airflow_provider_runcomfy.sources import prepare_input

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    fs.mkdir("inputs")
    fs.pipe_file("inputs/in.png", PNG + b"\x00" * 100_000)
    stored = {"prompt": "p", "image_url": "s3://inputs/in.png"}
    return median_ms(lambda: prepare_input(FLUX, stored, mask=lambda _: None), runs)


if __name__ == "__main__":
    sys.exit(main())
