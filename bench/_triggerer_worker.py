"""The worker side of ``triggerer_scale.py``: one strategy, N watchers, one event loop, one process.

``triggerer_scale.py --worker STRATEGY ...`` runs :func:`worker` in a process of its
own; it prints one ``RESULT {json}`` line that the orchestrator reads. Only
127.0.0.1 is contacted and every loop ends at ``--duration``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import resource
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

TOKEN = "bench-token"
#: By default a job completes this many poll intervals after its watcher starts (uniform in the
#: range): a pipeline that defers thousands of jobs at once waits on RunComfy's queue for a while.
JOB_INTERVALS = (10.0, 30.0)

Watch = Callable[[str], Awaitable[None]]


@dataclass
class Run:
    """What one strategy's process measured."""

    interval: float
    jobs_done: int = 0
    jobs_cut: int = 0
    errors: int = 0
    expected_polls: float = 0.0
    started: float = 0.0
    window_from: float = 0.0
    window_to: float = 0.0
    window_cpu: float = 0.0
    delays: list[float] = field(default_factory=list)
    rss_samples: list[int] = field(default_factory=list)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def configure_logging() -> None:
    """Log as a triggerer does (INFO, httpx at WARN as Airflow sets it), into /dev/null."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def job_id(slot: int, seq: int, submitted: float, done_at: float) -> str:
    """An id the status server reads the job's timeline from (see ``status_server.py``)."""
    return f"j{slot}x{seq}-{int(submitted * 1000)}-{int(done_at * 1000)}"


async def drive(
    watch: Watch, run: Run, watchers: int, duration: float, job_intervals: tuple[float, float] = JOB_INTERVALS
) -> None:
    """N slots, each waiting for one job after another until ``duration`` is up, then cancelled."""
    interval = run.interval
    started = time.time()
    stop_at = started + duration

    async def slot(index: int) -> None:
        # Deferred tasks arrive over time, not in one instant: spread the first polls over an interval.
        await asyncio.sleep(interval * index / watchers)
        seq = 0
        while True:
            seq += 1
            begin = time.time()
            done_at = begin + interval * random.uniform(*job_intervals)
            try:
                await watch(job_id(index, seq, begin, done_at))
            except asyncio.CancelledError:
                run.jobs_cut += 1
                run.expected_polls += (time.time() - begin) / interval + 0.5
                raise
            except Exception:
                run.errors += 1  # a watcher that gave up; its slot goes on with a new job
                run.expected_polls += (time.time() - begin) / interval + 1
                continue
            noticed = time.time()
            run.jobs_done += 1
            run.delays.append(noticed - done_at)
            # A watcher polls at its start and once per interval until the poll that sees the end.
            run.expected_polls += (noticed - begin) / interval + 1

    async def sample_memory() -> None:
        while True:
            run.rss_samples.append(rss_bytes())
            await asyncio.sleep(0.5)

    run.started = started
    tasks = [asyncio.create_task(slot(i)) for i in range(watchers)]
    sampler = asyncio.create_task(sample_memory())
    # The steady window starts once every watcher has started (one interval) and settled (two more).
    await asyncio.sleep(max(0.0, started + min(3 * interval, duration / 2) - time.time()))
    run.window_from, window_cpu = time.time(), time.process_time()
    await asyncio.sleep(max(0.0, stop_at - time.time()))
    run.window_to, run.window_cpu = time.time(), time.process_time() - window_cpu
    run.rss_samples.append(rss_bytes())
    for task in [*tasks, sampler]:
        task.cancel()
    await asyncio.gather(*tasks, sampler, return_exceptions=True)


def make_watch(strategy: str, base_url: str, interval: float) -> tuple[Watch, Callable[[], Awaitable[None]]]:
    """The strategy's wait for one job, and what closes its shared resources."""
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def nothing() -> None:
        return None

    if strategy.startswith("runcomfy"):
        from airflow_provider_runcomfy.client import _transport
        from airflow_provider_runcomfy.triggers.runcomfy import RunComfyRequestTrigger

        if strategy == "runcomfy-httpcore":
            _transport.uses_env_proxy = lambda: True  # the client then keeps httpx's own transport
        elif strategy == "runcomfy-httpx-aiohttp":
            import httpx
            import httpx_aiohttp

            def third_party(options: Any, *, max_connections: int) -> Any:
                transport = httpx_aiohttp.AiohttpTransport(
                    limits=httpx.Limits(max_connections=max_connections)
                )
                return httpx.AsyncClient(**options, transport=transport), transport

            _transport.async_http_client = third_party

        async def watch_trigger(request_id: str) -> None:
            async for event in RunComfyRequestTrigger(request_id, poll_interval=interval).run():
                if event.payload["status"] != "succeeded":
                    raise RuntimeError(f"unexpected event {event.payload}")

        return watch_trigger, nothing

    if strategy == "http-sensor":
        from airflow.providers.http.triggers.http import HttpSensorTrigger

        async def watch_sensor(request_id: str) -> None:
            trigger = HttpSensorTrigger(
                endpoint=f"sensor/{request_id}",
                http_conn_id="bench_http",
                method="GET",
                headers=headers,
                poke_interval=interval,
            )
            async for _event in trigger.run():
                return

        return watch_sensor, nothing

    def jitter() -> float:
        return interval * random.uniform(0.9, 1.1)

    if strategy == "httpx-shared":
        import httpx

        client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(60, connect=10))

        async def watch_httpx(request_id: str) -> None:
            url = f"{base_url}/v1/requests/{request_id}/status"
            while True:
                if (await client.get(url)).json()["status"] == "completed":
                    return
                await asyncio.sleep(jitter())

        return watch_httpx, client.aclose

    if strategy == "aiohttp-shared":
        import aiohttp

        session: aiohttp.ClientSession | None = None

        async def watch_aiohttp(request_id: str) -> None:
            nonlocal session
            if session is None:
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=ssl.create_default_context())
                )
            url = f"{base_url}/v1/requests/{request_id}/status"
            while True:
                async with session.get(url, headers=headers) as response:
                    if (await response.json())["status"] == "completed":
                        return
                await asyncio.sleep(jitter())

        async def close() -> None:
            if session is not None:
                await session.close()

        return watch_aiohttp, close
    raise SystemExit(f"unknown strategy {strategy!r}")


def job_intervals(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def worker(args: argparse.Namespace) -> None:
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    configure_logging()
    # Every strategy runs in a process that has Airflow loaded, as a triggerer has: its heap
    # (and so the cost of Python's garbage collections) is the same for all, the floor included.
    import airflow.triggers.base  # noqa: F401

    run = Run(args.interval)

    async def main() -> None:
        watch, close = make_watch(args.worker, args.base_url, args.interval)
        # One job first, so that what a long-running triggerer has long loaded (lazy imports, the
        # connection backends) is not counted: a job that is already complete, found by one poll.
        await watch(job_id(0, 0, time.time() - 2, time.time() - 1))
        gc.collect()
        baseline = rss_bytes()
        cpu_started = time.process_time()
        await drive(watch, run, args.watchers, args.duration, job_intervals(args.job_intervals))
        cpu = time.process_time() - cpu_started
        await close()
        delays = sorted(run.delays)
        quantiles = statistics.quantiles(delays, n=20) if len(delays) >= 20 else [float("nan")] * 19
        result = {
            "strategy": args.worker,
            "cpu_seconds": cpu,
            "baseline_rss": baseline,
            "peak_rss": max(run.rss_samples),
            "vm_hwm": peak_rss_bytes(),
            "jobs_done": run.jobs_done,
            "jobs_cut": run.jobs_cut,
            "errors": run.errors,
            "window_from": run.window_from,
            "window_to": run.window_to,
            "window_cpu": run.window_cpu,
            "expected_polls": run.expected_polls,
            "delay_p50": statistics.median(delays) if delays else float("nan"),
            "delay_p95": quantiles[18],
            "delay_max": delays[-1] if delays else float("nan"),
        }
        print("RESULT " + json.dumps(result), flush=True)

    asyncio.run(main())
