"""A real S3 API for tests: moto's server on 127.0.0.1, reached through s3fs like real S3.

Register it in a test module with ``pytest_plugins = ["tests.s3_fixture"]``.

- ``moto_s3_server`` (session): one moto server on a free loopback port, and the
  ``AWS_*`` environment that points s3fs (and boto3) at it, set for the session.
- ``moto_s3`` (function): that server emptied for this test, as a :class:`MotoS3`
  with helpers to make buckets, put and read objects; ``moto_s3.env`` is the
  environment to pass to ``airflow dags test`` subprocesses.

Without the amazon provider, ``ObjectStoragePath("s3://...")`` in this provider is
served by s3fs, which reads the endpoint from ``AWS_ENDPOINT_URL`` (botocore's
standard variable), so no Airflow connection is needed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

#: Credentials moto accepts; never real ones. The config files are pointed away so that a
#: developer's ~/.aws cannot leak into (or change) a test.
_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "moto-testing-key",
    "AWS_SECRET_ACCESS_KEY": "moto-testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass
class MotoS3:
    """A running moto S3 server: its endpoint, the environment that points at it, and helpers."""

    endpoint_url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def fs(self) -> Any:
        """An s3fs filesystem on this server (a fresh one, so no cached listing is stale)."""
        import s3fs

        return s3fs.S3FileSystem(client_kwargs={"endpoint_url": self.endpoint_url}, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if missing) and return ``s3://name``."""
        fs = self.fs
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def put(self, uri: str, data: bytes) -> str:
        """Write ``data`` to ``s3://bucket/key`` (the bucket is created when missing); return the uri."""
        path = uri.removeprefix("s3://")
        self.bucket(path.split("/", 1)[0])
        self.fs.pipe_file(path, data)
        return uri

    def read(self, uri: str) -> bytes:
        """The bytes of ``s3://bucket/key``."""
        data: bytes = self.fs.cat_file(uri.removeprefix("s3://"))
        return data

    def find(self, prefix: str) -> list[str]:
        """Every key under ``s3://bucket/prefix``, as ``s3://`` URIs."""
        return sorted(f"s3://{key}" for key in self.fs.find(prefix.removeprefix("s3://")))

    def reset(self) -> None:
        """Forget every bucket and object (moto's own reset endpoint)."""
        httpx.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def moto_s3_server() -> Iterator[MotoS3]:
    """A moto S3 server on 127.0.0.1 (a free port) for the session, and ``AWS_*`` pointing at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = MotoS3(endpoint, {**_FAKE_AWS, "AWS_ENDPOINT_URL": endpoint})
        with pytest.MonkeyPatch.context() as patch:
            for name, value in s3.env.items():
                patch.setenv(name, value)
            yield s3
    finally:
        server.stop()


@pytest.fixture
def moto_s3(moto_s3_server: MotoS3) -> Iterator[MotoS3]:
    """The session's moto server, emptied before and after this test."""
    moto_s3_server.reset()
    yield moto_s3_server
    moto_s3_server.reset()
