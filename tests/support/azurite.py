"""A loopback Azure Blob store: Microsoft's Azurite emulator (npm's `azurite`, installed into
.cache/azurite by scripts/test.sh), one process for the session, in memory. Workers and the CLI
reach it through the emulator's standard variables, as object_store reads them
(AZURE_STORAGE_USE_EMULATOR, AZURITE_BLOB_STORAGE_URL), with its well-known account and key.

Layout of CONTAINER: `cat.jpg` and `set/` (a.jpg, b.png, notes.txt); the container
`MISSING` does not exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

import pytest
from PIL import Image

from tests.support.images import encode
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.s3 import jpeg
from tests.support.waiting import wait_for

CONTAINER = "imgqueue-test"
MISSING = "imgqueue-missing"
SET_IMAGES = ("set/a.jpg", "set/b.png")
# Azurite's documented development account (public: it exists only in emulators).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def program() -> str | None:
    """azurite-blob where scripts/test.sh installs it, else on PATH, else None."""
    local = ROOT / ".cache/azurite/node_modules/.bin/azurite-blob"
    return str(local) if local.exists() else shutil.which("azurite-blob")


@dataclass
class Azurite:
    """The running emulator: `env` for the processes (and this one) that use it."""

    port: int
    env: dict[str, str] = field(default_factory=dict)

    def url(self, key: str, container: str = CONTAINER) -> str:
        return f"az://{container}/{key}"


def _create_container(port: int, name: str) -> None:
    """Create a container with Azure's REST API (object_store makes none), signed with the
    account's SharedKey."""
    date, version = formatdate(usegmt=True), "2021-08-06"
    headers = f"x-ms-date:{date}\nx-ms-version:{version}\n"
    resource = f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
    # The verb, then eleven standard headers, all empty here (Content-Length of 0 included).
    to_sign = "PUT\n" + "\n" * 11 + headers + resource
    key = base64.b64decode(ACCOUNT_KEY)
    signature = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "PUT",
            f"/{ACCOUNT}/{name}?restype=container",
            headers={
                "x-ms-date": date,
                "x-ms-version": version,
                "Authorization": f"SharedKey {ACCOUNT}:{signature.decode()}",
                "Content-Length": "0",
            },
        )
        answer = conn.getresponse()
        assert answer.status == 201, answer.read()[:300]
    finally:
        conn.close()


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", f"/{ACCOUNT}?comp=list")
        return conn.getresponse().status > 0
    except OSError:
        return False
    finally:
        conn.close()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite for the session, its container filled; skipped where it is not installed."""
    found = program()
    if found is None:
        pytest.skip("azurite is missing (scripts/test.sh installs it into .cache/azurite)")
    port = free_port()
    log = Path(tmp_path_factory.mktemp("azurite")) / "azurite.log"
    args = ["--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
    args += ["--skipApiVersionCheck", "--silent"]
    with log.open("wb") as out:
        proc = subprocess.Popen([found, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(port), timeout=30, what="azurite answering")
        _create_container(port, CONTAINER)
        env = {
            "AZURE_STORAGE_USE_EMULATOR": "true",
            "AZURITE_BLOB_STORAGE_URL": f"http://127.0.0.1:{port}",
        }
        emulator = Azurite(port, env)
        _fill(emulator)
        yield emulator
    finally:
        proc.terminate()
        proc.wait(10)


def _fill(emulator: Azurite) -> None:
    from core import objects

    with pytest.MonkeyPatch.context() as patch:
        for name, value in emulator.env.items():
            patch.setenv(name, value)
        objects.put_bytes(emulator.url("cat.jpg"), jpeg())
        objects.put_bytes(emulator.url("set/a.jpg"), jpeg((0, 0, 200)))
        png = encode(Image.new("RGB", (10, 12), (0, 200, 0)), "PNG")
        objects.put_bytes(emulator.url("set/b.png"), png)
        objects.put_bytes(emulator.url("set/notes.txt"), b"not an image")
