"""A local S3 emulator (moto's server on 127.0.0.1) for tests of stores on s3://; no network."""
from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

BUCKET = "sslsearch-test"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def moto_s3() -> Iterator[str]:
    """Start moto's S3 server, point the standard AWS environment at it (what pyarrow reads), yield ``s3://BUCKET``.

    Skips the test without ``moto[server]`` (in the dev extra).
    """
    moto_server = pytest.importorskip("moto.server", reason="the s3:// tests need moto[server] (in the dev extra)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    environment = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            patch.delenv("AWS_PROFILE", raising=False)
            import pyarrow.fs as pafs

            pafs.S3FileSystem(endpoint_override=environment["AWS_ENDPOINT_URL"],
                              allow_bucket_creation=True).create_dir(BUCKET)
            yield f"s3://{BUCKET}"
    finally:
        server.stop()
