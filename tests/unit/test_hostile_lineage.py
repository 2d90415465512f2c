"""What lineage sends away (to the OpenLineage backend) holds no credential and survives malformed URLs."""

from __future__ import annotations

import pytest

from airflow_provider_runcomfy.operators.lineage import batch_run_facet, dataset_name

SIGNATURE = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


@pytest.mark.parametrize(
    "url", ["https://[::1/x.png", "http://a[b/x.png", "https://cdn.example.net:port/x.png"]
)
def test_a_malformed_input_url_is_no_dataset_rather_than_an_error(url: str) -> None:
    assert dataset_name(url) is None


def test_why_a_batch_stopped_is_sent_without_the_signature_runcomfy_quoted() -> None:
    reason = f"RunComfy refused https://b.s3.amazonaws.com/in.png?X-Amz-Signature={SIGNATURE}: AccessDenied"

    facet = batch_run_facet(model_id="m", counts={"total": 1}, stopped="error", stop_reason=reason)

    assert SIGNATURE not in facet.stop_reason
    assert facet.stop_reason.startswith(
        "RunComfy refused https://b.s3.amazonaws.com/in.png?X-Amz-Signature=***"
    )
    assert facet.counts == {"total": 1}
