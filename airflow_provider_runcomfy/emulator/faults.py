"""Faults and rules as data: one pydantic model each, for the state, the admin API and both controls.

A test says ``emu.add_fault("status", "http", status=429)``; that builds a
``Fault`` here (validated: a typo or an impossible combination fails at
once, with the field named), and the very same model travels to the
state directly (``RunComfyEmulator``) or as JSON through the admin API
(``RemoteEmulator``). Nothing else spells out the arguments.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Endpoint = Literal["submit", "status", "result", "cancel", "model", "file", "sample"]
FaultEndpoint = Literal["submit", "status", "result", "cancel", "model", "file", "sample", "any"]
FaultKind = Literal[
    "http",
    "error_200",
    "delay",
    "drop",
    "truncate",
    "bad_body",
    "not_written",
    "gzip_bomb",
    "zlib_bomb",
    "png_bomb",
    "redirect",
]
OutputKind = Literal["image", "images", "video", "videos", "none"]

ENDPOINTS: tuple[str, ...] = get_args(Endpoint)
#: RunComfy's own endpoints (the rest are the emulator's file servers).
API_ENDPOINTS = ("submit", "status", "result", "cancel", "model")
#: Endpoints ``any`` covers: everything but the samples, which are inputs, not answers under test.
ANY_COVERS = (*API_ENDPOINTS, "file")

_FILE_ONLY = ("gzip_bomb", "zlib_bomb", "png_bomb", "redirect")
_DEFAULT_BOMB_SIZE = {"gzip_bomb": 1 << 30, "zlib_bomb": 1 << 30, "png_bomb": 400_000_000}
#: Bombs are served from a cached stream whose size is about 1/1000 of this.
MAX_BOMB_SIZE = 1 << 36


class Fault(BaseModel):
    """A planned misbehaviour of one endpoint: the next ``times`` requests to it get this answer.

    ============== =============================================================================
    kind           answer
    ============== =============================================================================
    http           HTTP ``status``; a JSON body when ``error_code`` or ``error_message`` is
                   given (served whole, however long), none otherwise; ``Retry-After`` from
                   ``retry_after``; any ``headers`` (e.g. ``{"Retry-After": "nan"}``).
    error_200      200 with a top-level ``error_code`` (default 500001).
    delay          waits ``seconds``, then answers normally.
    drop           closes the connection without an answer.
    truncate       the headers with the full ``Content-Length``, ``after_bytes`` bytes, then cut.
    bad_body       handled for real (a submit creates the job), then answered with ``status``
                   (200), ``content_type`` (application/json) and the raw ``body``
                   (default ``{"request_id": "``, a truncated JSON).
    not_written    ``result`` only: a finished job's next ``times`` reads answer
                   ``{"request_id", "status": "completed"}`` with no outcome yet.
    gzip_bomb      ``file``/``sample``: 200 with ``Content-Encoding: gzip, gzip``: a few KB that
                   inflate to ``size`` bytes (default 1 GiB).
    zlib_bomb      the same with ``Content-Encoding: deflate`` (about ``size`` / 1000 bytes sent).
    png_bomb       ``file``/``sample``: a valid 64x64 PNG whose IDAT inflates to ``size`` bytes
                   (default 400 MB).
    redirect       ``file``/``sample``: 302 to ``location``.
    ============== =============================================================================

    On ``submit`` and ``cancel``, ``delay``/``drop``/``truncate``/``bad_body`` act after the job
    was created or cancelled: the caller loses the answer, not the effect. ``request_id`` limits
    the fault to requests about that job; endpoint ``any`` covers every endpoint but ``sample``.
    """

    model_config = ConfigDict(extra="forbid")

    endpoint: FaultEndpoint
    kind: FaultKind
    times: int | None = 1
    """How many more requests it hits; ``None``: every one until cleared."""
    request_id: str | None = None
    status: int | None = Field(default=None, ge=100, le=599)
    error_code: int | None = None
    error_message: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] | None = None
    seconds: float | None = Field(default=None, ge=0)
    after_bytes: int | None = Field(default=None, ge=0)
    content_type: str | None = None
    body: str | None = None
    size: int | None = Field(default=None, ge=0, le=MAX_BOMB_SIZE)
    location: str | None = None
    id: int = 0
    """Given by the emulator when the fault is added."""
    hits: int = 0
    """How many requests it has hit so far."""

    @model_validator(mode="after")
    def _complete(self) -> Fault:
        kind, endpoint = self.kind, self.endpoint
        if kind == "http" and self.status is None:
            raise ValueError("an 'http' fault needs status=<100..599>")
        if kind == "delay" and self.seconds is None:
            raise ValueError("a 'delay' fault needs seconds=<0 or more>")
        if kind == "redirect" and not self.location:
            raise ValueError("a 'redirect' fault needs location=<URL>")
        if kind in _FILE_ONLY and endpoint not in ("file", "sample"):
            raise ValueError(f"a {kind!r} fault is for endpoint 'file' or 'sample', not {endpoint!r}")
        if kind == "not_written" and endpoint != "result":
            raise ValueError(f"a 'not_written' fault is for endpoint 'result', not {endpoint!r}")
        if kind == "bad_body" and endpoint in ("file", "sample"):
            raise ValueError("a 'bad_body' fault is for the API endpoints (or 'any'), not a file")
        if self.headers and any("\n" in k + v or "\r" in k + v for k, v in self.headers.items()):
            raise ValueError("headers must not contain line breaks")
        # Defaults that depend on the kind, filled in so that what the admin API echoes is what runs.
        if kind == "error_200" and self.error_code is None:
            self.error_code = 500001
        if kind == "truncate" and self.after_bytes is None:
            self.after_bytes = 0
        if kind == "bad_body":
            self.status = 200 if self.status is None else self.status
            self.content_type = self.content_type or "application/json"
            self.body = '{"request_id": "' if self.body is None else self.body
        if kind in _DEFAULT_BOMB_SIZE and self.size is None:
            self.size = _DEFAULT_BOMB_SIZE[kind]
        return self

    def matches(self, endpoint: str, request_id: str | None) -> bool:
        """Whether this fault still applies to a request of ``endpoint`` about ``request_id``."""
        if self.times is not None and self.times <= 0:
            return False
        if self.endpoint != endpoint and not (self.endpoint == "any" and endpoint in ANY_COVERS):
            return False
        return self.request_id is None or self.request_id == request_id


class Rule(BaseModel):
    """How to run the jobs it matches; rules are tried in order at submit and the first match wins.

    A job matches when its ``model_id`` equals ``model_id`` and its ``prompt``
    contains ``prompt_contains`` (each when given; no criteria: every job).
    The rule can change its timing, make it fail with ``fail_message``,
    change how many outputs it has (``num_outputs``) and of which kind
    (``output_kind``: ``image``, ``images``, ``video``, ``videos`` or
    ``none`` for an empty output), and pad its files to about
    ``output_bytes`` bytes. ``hold=True`` keeps its jobs queued, whatever
    ``queue_seconds`` says, until a test calls ``release()``: a test that needs a
    job still queued then says so, instead of betting on the clock.
    """

    model_config = ConfigDict(extra="forbid")

    prompt_contains: str | None = None
    model_id: str | None = None
    queue_seconds: float | None = Field(default=None, ge=0)
    run_seconds: float | None = Field(default=None, ge=0)
    fail_message: str | None = None
    num_outputs: int | None = Field(default=None, ge=1, le=100)
    output_bytes: int | None = Field(default=None, ge=0, le=512 * 1024 * 1024)
    output_kind: OutputKind | None = None
    hold: bool = False
    id: int = 0
    hits: int = 0

    def matches(self, model_id: str, prompt: str) -> bool:
        """Whether a job of ``model_id`` with ``prompt`` falls under this rule."""
        if self.model_id is not None and self.model_id != model_id:
            return False
        return self.prompt_contains is None or self.prompt_contains in prompt


def fault_from(endpoint: str, kind: str, times: int | None, request_id: str | None, **options: Any) -> Fault:
    """The ``Fault`` that ``add_fault(endpoint, kind, times, request_id, **options)`` asks for."""
    return Fault.model_validate(
        {"endpoint": endpoint, "kind": kind, "times": times, "request_id": request_id, **options}
    )
