"""The emulator's knobs: one pydantic model, so a typo in ``set_config(queue_secnds=1)`` fails loudly."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: The token the emulator accepts when none is configured. It is documented
#: (docs/emulator.md), so it is no secret; the CLI still never prints tokens.
DEFAULT_TOKEN = "emulator-token"

#: Model ids that answer 400001 as if RunComfy did not know them.
DEFAULT_UNKNOWN_MODELS = ("example/unknown-model",)


class EmulatorConfig(BaseModel):
    """How the emulated RunComfy behaves; every field can be changed at run time with ``set_config``.

    Times are in seconds of the wall clock: a job submitted at ``t0`` is
    ``in_queue`` until ``t0 + queue_seconds``, ``in_progress`` for
    ``run_seconds`` more, then finished. Changes apply to jobs submitted
    afterwards, except ``request_ttl_seconds`` and ``failed_status_word``,
    which are read whenever a job is looked at.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    token: str = Field(default=DEFAULT_TOKEN, min_length=1)
    """The token of the emulator's main user (``Authorization: Bearer <token>``)."""
    extra_tokens: list[str] = Field(default_factory=list)
    """Tokens of other users: valid, but a job belongs to the token that submitted it (403001)."""
    admin_token: str | None = Field(default=None, min_length=1)
    """When set, every ``/_emulator/`` request must carry it (``X-Emulator-Admin-Token``); see admin.py."""
    queue_seconds: float = Field(default=1.0, ge=0)
    run_seconds: float = Field(default=3.0, ge=0)
    request_ttl_seconds: float | None = Field(default=None, ge=0)
    """A finished job answers 404001 this long after it finished; ``None`` keeps it forever."""
    failed_status_word: Literal["completed", "failed"] = "completed"
    """What ``/status`` says of a failed job: RunComfy's docs leave it open, so both can be emulated."""
    balance_usd: float | None = None
    """The account balance, charged each submit's estimated cost; ``None`` means unlimited.

    A submit whose estimate is more than what is left is refused (HTTP 400, error 400002).
    """
    price_usd: float | None = Field(default=None, ge=0)
    """When set, the price per unit of every catalog model (``base_price_usd``), instead of the catalog's."""
    unlisted_price_usd: float = Field(default=0.04, ge=0)
    """What a job of a model outside the catalog costs (it publishes no price)."""
    unknown_models: list[str] = Field(default_factory=lambda: list(DEFAULT_UNKNOWN_MODELS))
    public_url: str | None = None
    """The base URL put into ``status_url``/``result_url``/output URLs; default: the URL the client used."""
    image_long_side: int = Field(default=512, ge=16, le=4096)
    """The long side, in pixels, of the PNG files the emulator renders."""
    fetch_timeout_seconds: float = Field(default=3.0, gt=0)
    """How long the emulator waits for an input image on a loopback HTTP server."""
    max_input_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    """Inputs larger than this fail the job, like RunComfy's 50 MB guide size for images."""

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    @property
    def valid_tokens(self) -> frozenset[str]:
        """Every token the emulator accepts."""
        return frozenset((self.token, *self.extra_tokens))

    def updated(self, **changes: Any) -> EmulatorConfig:
        """A validated copy with ``changes`` applied (unknown names raise ``ValidationError``)."""
        return EmulatorConfig.model_validate({**self.model_dump(), **changes})

    def public_dict(self) -> dict[str, Any]:
        """The settings without the tokens, for the admin API (which needs no token to read)."""
        return self.model_dump(exclude={"token", "extra_tokens", "admin_token"})
