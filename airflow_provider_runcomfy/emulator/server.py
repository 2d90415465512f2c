"""``RunComfyEmulator``: the emulator served by uvicorn from a background thread of this process.

This is what tests use: start it, point a connection at ``base_url``, run
the code under test, then look at ``journal``. Starting binds the socket
first, so port 0 gives a free port whose number is known before the first
request; stopping tells uvicorn to exit and waits for its thread.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Self

from airflow_provider_runcomfy.emulator.config import EmulatorConfig
from airflow_provider_runcomfy.emulator.controls import EmulatorControls
from airflow_provider_runcomfy.emulator.loopback import is_loopback_name
from airflow_provider_runcomfy.emulator.state import EmulatorState

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one), IPv4 or IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says so, and without it every keep-alive response waits ~40 ms (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_config(app: Any, *, log_level: str = "warning") -> Any:
    """uvicorn settings shared by the thread and the CLI: plain asyncio, no lifespan, no access log."""
    import uvicorn  # imported here: the pytest plugin imports this package and must stay light

    from airflow_provider_runcomfy.emulator.connections import protocol_class

    return uvicorn.Config(
        app,
        http=protocol_class(),  # notes each connection's transport, for the drop and truncate faults
        lifespan="off",
        loop="asyncio",
        log_config=None,
        log_level=log_level,
        access_log=False,
        # A test that stops the emulator while a "delay" fault sleeps must not wait for it.
        timeout_graceful_shutdown=1,
    )


class RunComfyEmulator(EmulatorControls):
    """An emulated RunComfy Model API on a loopback port, served from a background thread.

    ::

        with RunComfyEmulator(token="t", queue_seconds=0.2, run_seconds=0.5) as emu:
            os.environ.update(emu.airflow_conn_env())
            ...  # run the DAG, then assert on emu.journal

    :param config: the settings (default ``EmulatorConfig()``); ``**overrides`` are applied on top
        (``token``, ``queue_seconds``, ``run_seconds``, ... any ``EmulatorConfig`` field).
    :param host: the interface to listen on; loopback only unless ``allow_remote``.
    :param port: the port, 0 for a free one (``base_url`` tells which).
    """

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        **overrides: Any,
    ) -> None:
        if not allow_remote and not is_loopback_name(host):
            raise ValueError(
                f"refusing to listen on {host!r}: the emulator is for loopback (allow_remote=True)"
            )
        self.state = EmulatorState((config or EmulatorConfig()).updated(**overrides))
        self._host = host
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._base_url: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Serve on the configured host and port; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the emulator is already running")
        import uvicorn

        from airflow_provider_runcomfy.emulator.app import create_app

        sock = bind_socket(self._host, self._port)
        server = uvicorn.Server(uvicorn_config(create_app(state=self.state)))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="runcomfy-emulator", daemon=True
        )
        self._socket, self._server, self._thread = sock, server, thread
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the RunComfy emulator did not start (see the log above)")
            time.sleep(0.005)
        port = sock.getsockname()[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._base_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Stop serving and wait for the server thread (at most a few seconds); safe to call twice."""
        server, thread, sock = self._server, self._thread, self._socket
        self._server = self._thread = self._socket = None
        self._base_url = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(0.5)
            if thread.is_alive():  # a request still running (e.g. a long "delay" fault): cut it
                server.force_exit = True
                thread.join(_STOP_TIMEOUT)
        if sock is not None:
            sock.close()

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """The same as ``stop()``: what leaving its ``with`` block does."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __repr__(self) -> str:
        return f"RunComfyEmulator({self._base_url or 'stopped'})"

    # -- controls: EmulatorControls acts on this emulator's own memory --------------------------------

    @property
    def _plane(self) -> EmulatorState:
        return self.state

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the emulator is not running: call start() or use it as a context manager")
        return self._base_url

    @property
    def token(self) -> str:
        return self.state.config.token

    @property
    def config(self) -> EmulatorConfig:
        """The live settings (read-only: change them with ``set_config``)."""
        return self.state.config
