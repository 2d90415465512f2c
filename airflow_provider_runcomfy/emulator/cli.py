"""``runcomfy-emulator``: serve the emulated RunComfy Model API until SIGTERM or Ctrl-C.

Prints ``RunComfy emulator listening on http://127.0.0.1:8188 (...)`` once
it accepts connections (scripts wait for it, or for ``--ready-file``),
then how to point Airflow at it. The built-in default token is printed (it
is documented, so no secret); a token given by flag or environment never is.
``runcomfy-emulator --help`` is the guide a wheel user has at hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from airflow_provider_runcomfy.emulator.config import DEFAULT_TOKEN, EmulatorConfig
from airflow_provider_runcomfy.emulator.loopback import is_loopback_name

TOKEN_ENV = "RUNCOMFY_EMULATOR_TOKEN"
ADMIN_TOKEN_ENV = "RUNCOMFY_EMULATOR_ADMIN_TOKEN"

GUIDE = f"""\
token:
  API calls need 'Authorization: Bearer <token>'. The token is --token, else
  ${TOKEN_ENV}, else the built-in default '{DEFAULT_TOKEN}'.

point Airflow at it (connection runcomfy_default):
  export AIRFLOW_CONN_RUNCOMFY_DEFAULT='{{"conn_type":"runcomfy","host":"http://127.0.0.1:8188","password":"{DEFAULT_TOKEN}"}}'

what it serves:
  POST /v1/models/<model_id>, GET /v1/requests/<id>/status|result, POST .../cancel,
  GET /v1/models/<model_id> (schema and price), output files under /files/,
  sample input pictures under /samples/ (portrait, street, product, landscape).

controls (faults, rules, journal) from another process:
  the admin API under /_emulator/ (JSON, loopback Host only; --admin-token to
  require a token too), or in Python:
    from airflow_provider_runcomfy.emulator import RemoteEmulator
    RemoteEmulator("http://127.0.0.1:8188").add_fault("status", "http", status=503)

in pytest (pip install "airflow-provider-runcomfy[emulator]"):
  fixtures runcomfy_emulator and runcomfy_emulator_conn_env; in Python,
  help(airflow_provider_runcomfy.emulator) and docs/emulator.md in the sdist.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runcomfy-emulator",
        description="An offline RunComfy Model API for tests, CI and the example DAGs: no token, no internet.",
        epilog=GUIDE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8188, help="port, 0 for a free one (default: 8188)")
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow a --host that is not loopback (no TLS, fake auth!)"
    )
    parser.add_argument(
        "--token",
        help=f"the API token to accept; prefer the {TOKEN_ENV} environment variable "
        "(default: the documented 'emulator-token')",
    )
    parser.add_argument(
        "--admin-token",
        help=f"require this token (header X-Emulator-Admin-Token) on the admin API; prefer {ADMIN_TOKEN_ENV}",
    )
    parser.add_argument(
        "--extra-token",
        action="append",
        default=[],
        help="another user's token (repeatable): valid, but may not read the main user's jobs",
    )
    parser.add_argument("--queue-seconds", type=float, help="seconds a job stays in_queue (default: 1)")
    parser.add_argument("--run-seconds", type=float, help="seconds a job stays in_progress (default: 3)")
    parser.add_argument("--request-ttl-seconds", type=float, help="results expire this long after finishing")
    parser.add_argument(
        "--failed-status-word",
        choices=["completed", "failed"],
        help="what /status says of a failed job (default: completed)",
    )
    parser.add_argument(
        "--balance-usd", type=float, help="account balance; submits fail with 400002 when spent"
    )
    parser.add_argument(
        "--price-usd", type=float, help="price per unit of every model (default: each model's catalog price)"
    )
    parser.add_argument(
        "--public-url", help="base URL to put in returned URLs (default: the URL clients used)"
    )
    parser.add_argument("--ready-file", type=Path, help="write the base URL to this file once listening")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return parser


def _token(args: argparse.Namespace) -> tuple[str | None, str]:
    """The token to use and a description of where it came from (which is all that gets printed)."""
    if args.token:
        return args.token, "token from --token"
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV], f"token from {TOKEN_ENV}"
    return None, f"token: {DEFAULT_TOKEN}, the built-in default"


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground; returns the exit status (0 after SIGTERM/SIGINT)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.allow_remote and not is_loopback_name(args.host):
        parser.error(
            f"--host {args.host} is not a loopback address; add --allow-remote if you really mean it"
        )
    token, token_source = _token(args)
    settings: dict[str, Any] = {
        name: value
        for name, value in {
            "token": token,
            "admin_token": args.admin_token or os.environ.get(ADMIN_TOKEN_ENV) or None,
            "extra_tokens": args.extra_token,
            "queue_seconds": args.queue_seconds,
            "run_seconds": args.run_seconds,
            "request_ttl_seconds": args.request_ttl_seconds,
            "failed_status_word": args.failed_status_word,
            "balance_usd": args.balance_usd,
            "price_usd": args.price_usd,
            "public_url": args.public_url,
        }.items()
        if value is not None
    }
    try:
        config = EmulatorConfig(**settings)
    except ValidationError as exc:
        message = str(exc)
        for secret in (token, settings.get("admin_token")):
            message = message.replace(secret, "<token>") if secret else message
        parser.error(message)

    import uvicorn

    from airflow_provider_runcomfy.emulator.app import create_app
    from airflow_provider_runcomfy.emulator.server import bind_socket, uvicorn_config

    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"runcomfy-emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    server = uvicorn.Server(uvicorn_config(create_app(config), log_level=args.log_level))

    # uvicorn handles SIGINT/SIGTERM while it serves, then re-raises the signal to the handler that
    # was installed before it: this one, so the process ends with status 0 instead of dying from
    # the signal. Before uvicorn starts, it asks the server not to start serving.
    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        asyncio.run(_serve(server, sock, args, token_source))
    finally:
        sock.close()
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    print("RunComfy emulator stopped", flush=True)
    return 0


async def _serve(server: Any, sock: Any, args: argparse.Namespace, token_source: str) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no "started" event
        await asyncio.sleep(0.01)
    if server.started:
        host, port = sock.getsockname()[:2]
        base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if args.ready_file is not None:  # written whole (rename), before the line that scripts wait for
            partial = args.ready_file.with_name(args.ready_file.name + ".tmp")
            partial.write_text(base_url + "\n")
            partial.replace(args.ready_file)
        print(
            f"RunComfy emulator listening on {base_url} ({token_source}; runcomfy-emulator --help)",
            flush=True,
        )
        password = DEFAULT_TOKEN if token_source.startswith("token: ") else "<the token>"
        conn = f'{{"conn_type":"runcomfy","host":"{base_url}","password":"{password}"}}'
        print(f"Point Airflow at it: export AIRFLOW_CONN_RUNCOMFY_DEFAULT='{conn}'", flush=True)
    await task


if __name__ == "__main__":
    raise SystemExit(main())
