"""A credential inside a text from elsewhere never survives redaction; the rest of the text does."""

from __future__ import annotations

import pytest

from airflow_provider_runcomfy.client.redact import (
    credential_values,
    is_credential_param,
    redact_text,
    redact_url,
)

S3_SIGNED = (
    "https://bucket.s3.amazonaws.com/in/cat.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20261207T010000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLETOKEN"
    "&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)
SECRETS = (
    "AKIAEXAMPLE",
    "FwoGZXIvYXdzEXAMPLETOKEN",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
)


def test_an_error_text_quoting_an_s3_presigned_url_keeps_the_url_but_not_its_signature() -> None:
    text = f"could not fetch image_url {S3_SIGNED}: 403 Forbidden"

    cleaned = redact_text(text)

    for secret in SECRETS:
        assert secret not in cleaned
    assert cleaned.startswith("could not fetch image_url https://bucket.s3.amazonaws.com/in/cat.png?")
    assert cleaned.endswith(": 403 Forbidden")
    assert "X-Amz-Signature=***" in cleaned


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://cdn.example.com/a.png?token=tok-123456789", "tok-123456789"),
        ("https://acct.blob.core.windows.net/c/a.png?sv=2024-01-01&sp=r&sig=AbC%2Bdef%3D", "AbC%2Bdef%3D"),
        ("https://storage.googleapis.com/b/a.png?X-Goog-Signature=beefcafe1234", "beefcafe1234"),
        (
            "https://d1.cloudfront.net/a.png?Policy=eyJTdGF0ZW1lbnQi&Key-Pair-Id=APKAEXAMPLE",
            "eyJTdGF0ZW1lbnQi",
        ),
        ("https://d1.cloudfront.net/a.png?Policy=eyJTdGF0ZW1lbnQi&Key-Pair-Id=APKAEXAMPLE", "APKAEXAMPLE"),
        ("https://api.example.com/a.png?api_key=k3y-v4lue-99", "k3y-v4lue-99"),
        ("https://user:hunter2-password@files.example.com/a.png", "hunter2-password"),
        ("https://only-a-token@files.example.com/a.png", "only-a-token"),
    ],
)
def test_every_credential_form_goes(url: str, secret: str) -> None:
    assert secret not in redact_url(url)
    assert secret not in redact_text(f"error: cannot read {url}.")


def test_a_presigned_url_quoted_percent_encoded_inside_another_url_loses_its_signature() -> None:
    text = "redirected to https://proxy.example.com/get?u=https%3A%2F%2Fb.s3.amazonaws.com%2Fa.png%3FX-Amz-Signature%3Ddeadbeef99%26X-Amz-Date%3D20261207"

    cleaned = redact_text(text)

    assert "deadbeef99" not in cleaned
    assert "b.s3.amazonaws.com" in cleaned


def test_a_url_inside_json_and_html_is_redacted_up_to_its_quote() -> None:
    json_text = '{"detail": "bad image https://x.example.com/a.png?sig=s3cr3tv4lue", "code": 1}'
    html_text = '<a href="https://x.example.com/a.png?a=1&amp;token=s3cr3tv4lue">x</a>'

    assert redact_text(json_text) == '{"detail": "bad image https://x.example.com/a.png?sig=***", "code": 1}'
    assert redact_text(html_text) == '<a href="https://x.example.com/a.png?a=1&amp;token=***">x</a>'


def test_a_bearer_token_echoed_by_a_proxy_goes() -> None:
    assert redact_text("sent Authorization: Bearer rc_live_abcdefghij") == "sent Authorization: Bearer ***"


def test_harmless_text_and_parameters_are_kept_as_they_were() -> None:
    text = "prompt too long (max 1000) for https://cdn.runcomfy.net/out/1.png?width=512&format=png#top"

    assert redact_text(text) == text
    assert redact_text("") == ""


def test_masking_and_redacting_share_one_rule() -> None:
    query = "X-Amz-Date=20261207&sig=abc&width=5&Token=t&session_id=s"

    assert credential_values(query) == ["20261207", "abc", "t", "s"]
    assert [is_credential_param(name) for name in ("width", "format", "X-AMZ-Expires", "access_token")] == [
        False,
        False,
        True,
        True,
    ]


def test_a_hostile_text_is_scanned_in_bounded_steps() -> None:
    """Half a million query-ish characters: the scan ends (no nested quantifiers to blow up)."""
    hostile = "?" + "a" * 200 + ("&key=" + "b" * 50) * 10_000 + "%3D" * 10_000

    cleaned = redact_text(hostile)

    assert "b" * 50 not in cleaned
