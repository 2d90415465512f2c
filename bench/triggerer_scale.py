"""Triggerer at scale: what N waiting RunComfy jobs cost one triggerer process, against other ways to poll.

One command starts an HTTPS status server on 127.0.0.1 (``status_server.py``, its
own process and CPU) and then, one after the other, one process per strategy,
each running N watchers in one event loop against that server for ``--duration``
seconds:

- ``runcomfy``: ``RunComfyRequestTrigger(...).run()``, this provider's trigger, as the
  triggerer runs it (connection from ``AIRFLOW_CONN_RUNCOMFY_DEFAULT``, TLS verified
  against the benchmark's CA through ``SSL_CERT_FILE``);
- ``http-sensor``: Airflow's ``HttpSensorTrigger`` (apache-airflow-providers-http), which
  opens a new aiohttp session per poll;
- ``httpx-shared``: a bare poll loop over one shared ``httpx.AsyncClient``;
- ``aiohttp-shared``: a bare poll loop over one shared ``aiohttp.ClientSession`` -- the floor;
- ``runcomfy-httpcore`` and ``runcomfy-httpx-aiohttp`` (only when asked for): our trigger
  over httpx's own transport, and over the ``httpx-aiohttp`` package's transport.

Every watcher slot waits for one job after another (each job completes at a time
carried in its id, 5-15 poll intervals after it starts), so triggers start and end
all through the run, as in a triggerer. Per strategy it prints polls, CPU per poll,
peak RSS and memory per watcher, TCP connections the server saw opened, the share
of the poll schedule kept, how long after a job completed its watcher noticed
(p50/p95), and ratios to the floor.

Examples::

    .venv/bin/python bench/triggerer_scale.py --watchers 1000 --interval 1 --duration 30
    .venv/bin/python bench/triggerer_scale.py --watchers 10000 --interval 5 --duration 60

This is a measurement, not a test: nothing fails. Only 127.0.0.1 is contacted,
every loop ends at ``--duration`` and every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The worker side (``--worker``, one process per strategy) lives beside this file.
from _triggerer_worker import JOB_INTERVALS, TOKEN, worker

HERE = Path(__file__).resolve().parent
REQUIRED = ["runcomfy", "http-sensor", "httpx-shared", "aiohttp-shared"]
EXTRA = ["runcomfy-httpcore", "runcomfy-httpx-aiohttp"]
FLOOR = "aiohttp-shared"
#: Seconds a strategy's process may outlive ``--duration`` (imports, shutdown) before it is stopped.
GRACE_SECONDS = 120.0

# -- the orchestrator ------------------------------------------------------------------------------


def server_stats(base_url: str, ca_file: str) -> dict[str, Any]:
    import http.client

    host, port = base_url.removeprefix("https://").split(":")
    connection = http.client.HTTPSConnection(
        host, int(port), context=ssl.create_default_context(cafile=ca_file), timeout=10
    )
    try:
        connection.request("GET", "/_bench/stats")
        return dict(json.loads(connection.getresponse().read()))
    finally:
        connection.close()


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_strategy(
    strategy: str, args: argparse.Namespace, ready: dict[str, Any], server_pid: int, cpu: int | None
) -> dict[str, Any]:
    host_port = ready["base_url"].removeprefix("https://")
    env = {
        **os.environ,
        "SSL_CERT_FILE": ready["ca_file"],
        "AIRFLOW_CONN_RUNCOMFY_DEFAULT": json.dumps(
            {"conn_type": "runcomfy", "host": ready["base_url"], "password": TOKEN}
        ),
        "AIRFLOW_CONN_BENCH_HTTP": json.dumps(
            {
                "conn_type": "http",
                "host": host_port.split(":")[0],
                "port": int(host_port.split(":")[1]),
                "schema": "https",
            }
        ),
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(name, None)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        strategy,
        "--base-url",
        ready["base_url"],
        "--watchers",
        str(args.watchers),
        "--interval",
        str(args.interval),
        "--duration",
        str(args.duration),
        "--job-intervals",
        args.job_intervals,
    ]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    before = server_stats(ready["base_url"], ready["ca_file"])
    server_cpu = process_cpu_seconds(server_pid)
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=args.duration + GRACE_SECONDS, check=False
    )
    server_cpu = process_cpu_seconds(server_pid) - server_cpu
    after = server_stats(ready["base_url"], ready["ca_file"])
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        sys.stderr.write(completed.stderr[-3000:])
        raise SystemExit(f"strategy {strategy} failed (exit {completed.returncode})")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    requests = {key: after["requests"][key] - before["requests"][key] for key in before["requests"]}
    poll_endpoint = "sensor" if strategy == "http-sensor" else "status"
    result["polls"] = requests[poll_endpoint]
    # The steady window: whole seconds inside it, from the server's per-second poll counts.
    window = [
        bucket
        for second, bucket in after["per_second"].items()
        if result["window_from"] <= int(second) and int(second) + 1 <= result["window_to"]
    ]
    result["window_polls"] = sum(bucket[0] for bucket in window)
    result["window_gaps"] = sum(bucket[1] for bucket in window)
    result["window_gap_sum"] = sum(bucket[2] for bucket in window)
    seconds = len(window)
    result["window_cpu"] *= seconds / max(result["window_to"] - result["window_from"], 1e-9)
    result["requests"] = sum(requests.values()) - requests["other"]
    result["connections"] = after["connections_opened"] - before["connections_opened"]
    result["server_cpu_share"] = server_cpu / (after["time"] - before["time"])
    return result


def fmt_bytes(value: float) -> str:
    return f"{value / 1e6:.0f} MB" if value >= 1e6 else f"{value / 1e3:.1f} KB"


def derive(r: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The figures the table shows, from what one run of a strategy measured."""
    r["cpu_poll"] = r["window_cpu"] / max(r["window_polls"], 1)
    r["cpu_poll_all"] = r["cpu_seconds"] / max(r["polls"], 1)
    r["kept"] = args.interval * r["window_gaps"] / r["window_gap_sum"] if r["window_gap_sum"] else 0.0
    r["kept_all"] = r["polls"] / max(r["expected_polls"], 1)
    r["mem"] = max(r["peak_rss"] - r["baseline_rss"], 0) / args.watchers
    return r


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A strategy's rounds as one row: the median of each figure (other processes share the CPU)."""
    combined: dict[str, Any] = {"strategy": runs[0]["strategy"], "rounds_cpu": [r["cpu_poll"] for r in runs]}
    for key, value in runs[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            combined[key] = statistics.median(r[key] for r in runs)
    return combined


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print one row per strategy, then the goals of issue #6 for ours."""
    floor = next((r for r in results if r["strategy"] == FLOOR), None)
    sensor = next((r for r in results if r["strategy"] == "http-sensor"), None)

    def ratio(r: dict[str, Any], key: str) -> str:
        return f"{r[key] / floor[key]:.2f}" if floor and floor[key] else "-"

    print(
        f"\n{args.watchers} watchers polling every {args.interval:g} s for {args.duration:g} s per strategy; "
        f"each job ends after {args.job_intervals.replace(',', '-')} intervals and its watcher is replaced; "
        f"HTTPS (verified) on 127.0.0.1; one process (Airflow loaded) and event loop per strategy"
        + (f", on CPU {args.client_cpu} (server on CPU {args.server_cpu})" if args.pin else "")
        + f".\nMedians of {args.rounds} round(s), strategies interleaved. steady = after every watcher has"
        " started (the first interval) and settled (two more); all = the whole run, start-up burst"
        " included. kept = polls made / polls due."
    )
    columns = [
        ("strategy", 24), ("polls", 8), ("CPU/poll", 10), ("x floor", 8), ("(all)", 11), ("x floor", 8),
        ("kept", 7), ("(all)", 7), ("peak RSS", 9), ("mem/watcher", 12), ("x floor", 8), ("TCP conns", 10),
        ("delay p50", 10), ("p95", 7), ("errors", 7), ("srv CPU", 8),
    ]  # fmt: skip
    header = "".join(
        f"{name:<{width}}" if i == 0 else f"{name:>{width}}" for i, (name, width) in enumerate(columns)
    )
    print(header)
    print("-" * len(header))
    for r in results:
        cells = [
            r["strategy"], int(r["polls"]), f"{r['cpu_poll'] * 1e3:.3f}ms", ratio(r, "cpu_poll"),
            f"{r['cpu_poll_all'] * 1e3:.3f}ms", ratio(r, "cpu_poll_all"), f"{r['kept']:.1%}",
            f"{r['kept_all']:.1%}", fmt_bytes(r["peak_rss"]), fmt_bytes(r["mem"]), ratio(r, "mem"),
            int(r["connections"]), f"{r['delay_p50']:.2f}s", f"{r['delay_p95']:.2f}s", int(r["errors"]),
            f"{r['server_cpu_share']:.0%}",
        ]  # fmt: skip
        print(
            "".join(
                f"{c!s:<{w}}" if i == 0 else f"{c!s:>{w}}"
                for i, (c, (_, w)) in enumerate(zip(cells, columns, strict=True))
            )
        )
    if args.rounds > 1:
        print(
            "CPU/poll (steady) of each round: "
            + "; ".join(
                f"{r['strategy']} " + ", ".join(f"{cpu * 1e3:.3f}" for cpu in r["rounds_cpu"])
                for r in results
            )
            + " ms"
        )
    ours = next((r for r in results if r["strategy"] == "runcomfy"), None)
    if ours is None:
        return
    print("\ngoals (runcomfy):")
    if floor:
        steady, whole = ours["cpu_poll"] / floor["cpu_poll"], ours["cpu_poll_all"] / floor["cpu_poll_all"]
        print(
            f"  CPU per poll <= 1.5x the bare shared aiohttp loop: {steady:.2f}x steady  {_verdict(steady <= 1.5)}"
            f"; {whole:.2f}x whole run  {_verdict(whole <= 1.5)}"
        )
    if sensor:
        steady, whole = ours["cpu_poll"] / sensor["cpu_poll"], ours["cpu_poll_all"] / sensor["cpu_poll_all"]
        print(
            f"  CPU per poll <= 1/5 of HttpSensorTrigger's: 1/{1 / steady:.1f} steady  {_verdict(steady <= 0.2)}"
            f"; 1/{1 / whole:.1f} whole run  {_verdict(whole <= 0.2)}"
        )
        share = ours["mem"] / max(sensor["mem"], 1)
        print(
            f"  memory per watcher <= 1/8 of HttpSensorTrigger's: 1/{1 / max(share, 1e-9):.1f}  {_verdict(share <= 0.125)}"
        )
    bound = args.interval + 0.5
    print(
        f"  schedule kept >= 95%: {ours['kept']:.1%} steady  {_verdict(ours['kept'] >= 0.95)}"
        f"; {ours['kept_all']:.1%} whole run  {_verdict(ours['kept_all'] >= 0.95)}"
    )
    print(
        f"  completion noticed within {bound:g} s at p95: {ours['delay_p95']:.2f} s  {_verdict(ours['delay_p95'] <= bound)}"
    )


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def orchestrate(args: argparse.Namespace) -> None:
    strategies = args.strategies.split(",") if args.strategies else REQUIRED
    unknown = set(strategies) - set(REQUIRED + EXTRA)
    if unknown:
        raise SystemExit(f"unknown strategies: {', '.join(sorted(unknown))}")
    if FLOOR in strategies:  # the floor first: the ratios need it, and it warms nothing the others use
        strategies = [FLOOR] + [s for s in strategies if s != FLOOR]
    with tempfile.TemporaryDirectory(prefix="triggerer-bench-") as tmp:
        ready_file = Path(tmp) / "server.json"
        server_cmd = [sys.executable, str(HERE / "status_server.py"), "--ready-file", str(ready_file)]
        server_cmd += [
            "--max-seconds",
            str(args.rounds * len(strategies) * (args.duration + GRACE_SECONDS) + 60),
        ]
        if args.pin:
            server_cmd += ["--cpu", str(args.server_cpu)]
        server = subprocess.Popen(server_cmd)
        try:
            deadline = time.monotonic() + 30
            while not ready_file.exists():
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the status server did not start")
                time.sleep(0.05)
            ready = json.loads(ready_file.read_text())
            runs: dict[str, list[dict[str, Any]]] = {strategy: [] for strategy in strategies}
            for round_number in range(args.rounds):
                # Interleaved, in a rotating order: a burst of load from elsewhere on the machine
                # then lands on different strategies in different rounds.
                shift = round_number % len(strategies)
                for strategy in strategies[shift:] + strategies[:shift]:
                    print(f"round {round_number + 1}: running {strategy} ...", file=sys.stderr, flush=True)
                    cpu = args.client_cpu if args.pin else None
                    runs[strategy].append(derive(run_strategy(strategy, args, ready, server.pid, cpu), args))
            report([combine(runs[strategy]) for strategy in strategies], args)
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--watchers", type=int, default=1000, help="jobs waited for at once, per strategy")
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each strategy runs")
    parser.add_argument(
        "--strategies",
        default="",
        help=f"comma-separated, default {','.join(REQUIRED)}; also {','.join(EXTRA)}",
    )
    parser.add_argument(
        "--job-intervals",
        default=",".join(f"{n:g}" for n in JOB_INTERVALS),
        help="MIN,MAX: a job completes after this many poll intervals (uniform); then its slot starts another",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each strategy, interleaved; the medians are shown"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to CPUs")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watchers < 1 or args.interval <= 0 or not 0 < args.duration <= 3600 or not 1 <= args.rounds <= 10:
        raise SystemExit(
            "--watchers >= 1, --interval > 0, 0 < --duration <= 3600 and 1 <= --rounds <= 10, please"
        )
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        args.pin = False
    if args.worker:
        worker(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
