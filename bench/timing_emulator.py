"""How long the bundled emulator takes to start and stop in a thread, and how fast it answers.

Not a test: speed belongs here, where a slow machine gives a slower figure instead of a red
test. ``tests/unit/test_emulator_runtime.py`` checks that start and stop work; this prints how
long they take, and the latency of each API call a provider makes (``docs/emulator.md``).

    .venv/bin/python bench/timing_emulator.py --rounds 20 --calls 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from airflow_provider_runcomfy.emulator import RunComfyEmulator

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


def start_stop(rounds: int) -> tuple[list[float], list[float]]:
    import uvicorn  # noqa: F401  - imports warmed: the figures are the emulator's own

    starts, stops = [], []
    for _ in range(rounds):
        began = time.perf_counter()
        emulator = RunComfyEmulator(token="t").start()
        starts.append(time.perf_counter() - began)
        began = time.perf_counter()
        emulator.stop()
        stops.append(time.perf_counter() - began)
    return starts, stops


def latency(calls: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {"submit": [], "status": [], "result": [], "cancel": []}
    with RunComfyEmulator(token="t", queue_seconds=3600, run_seconds=0) as emulator:
        image = emulator.sample_url()
        with httpx.Client(base_url=emulator.base_url, headers={"Authorization": "Bearer t"}) as http:
            for _ in range(calls):
                timed = {}
                began = time.perf_counter()
                request_id = http.post(f"/v1/models/{FLUX}", json={"prompt": "p", "image_url": image}).json()[
                    "request_id"
                ]
                timed["submit"] = time.perf_counter() - began
                for name, method, path in (
                    ("status", "GET", "status"),
                    ("result", "GET", "result"),
                    ("cancel", "POST", "cancel"),
                ):
                    began = time.perf_counter()
                    http.request(method, f"/v1/requests/{request_id}/{path}").raise_for_status()
                    timed[name] = time.perf_counter() - began
                for name, value in timed.items():
                    seconds[name].append(value)
    return seconds


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {statistics.median(ordered) * 1000:7.1f} ms   p95 {p95 * 1000:7.1f} ms   max {ordered[-1] * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="start/stop cycles (default 20)")
    parser.add_argument(
        "--calls", type=int, default=200, help="jobs submitted, polled and cancelled (default 200)"
    )
    args = parser.parse_args()
    starts, stops = start_stop(max(1, min(args.rounds, 200)))
    print(f"emulator start ({len(starts)} rounds): {summary(starts)}")
    print(f"emulator stop  ({len(stops)} rounds): {summary(stops)}")
    for name, values in latency(max(1, min(args.calls, 5000))).items():
        print(f"{name:<7} ({len(values)} calls, one client, loopback): {summary(values)}")


if __name__ == "__main__":
    main()
