"""Hostile image files through a real worker: named errors in the results, the worker alive, a
good job beside them unharmed."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from producer import Client, JobFailed
from tests.support import images
from tests.support.workers import WorkerFactory

HOSTILE = {
    "bomb.png": (images.bomb, "TooLarge"),
    "huge.png": (lambda: images.png_claiming(100_000, 100_000), "TooLarge"),
    "cut.png": (lambda: images.GOOD_PNG[: len(images.GOOD_PNG) // 2], "NotAnImage"),
    "text.jpg": (lambda: b"<html>not an image</html>", "NotAnImage"),
    "icon.ico": (lambda: images.encode(Image.new("RGB", (8, 8)), "ICO"), "UnsupportedFormat"),
}
FINE = {
    "anim.gif": images.animated_gif,
    "cmyk.jpg": images.cmyk_jpeg,
    "deep.png": images.png16,
    "palette.png": images.palette_transparent,
    "rotated.jpg": images.exif_rotated,
}


def test_hostile_files_through_a_worker(
    workers: WorkerFactory, client: Client, image_root: Path
) -> None:
    hostile = image_root / "hostile"
    hostile.mkdir(exist_ok=True)
    for name, (make, _) in HOSTILE.items():
        (hostile / name).write_bytes(make())
    for name, make_fine in FINE.items():
        (hostile / name).write_bytes(make_fine())
    worker = workers.start(MODEL="sleep:5ms")
    bad = {name: client.submit(f"hostile/{name}") for name in HOSTILE}
    fine = {name: client.submit(f"hostile/{name}") for name in FINE}
    good = client.submit("cat.jpg")
    for name, task_id in bad.items():
        with pytest.raises(JobFailed) as info:
            client.result(task_id, timeout=60)
        assert info.value.error_type == HOSTILE[name][1], name
    sizes = {name: client.result(t, timeout=60)["image"] for name, t in fine.items()}
    assert sizes["anim.gif"]["format"] == "GIF"
    assert sizes["rotated.jpg"] == {"width": 64, "height": 32, "format": "JPEG"}
    assert client.result(good, timeout=60)["image"]["format"] == "JPEG"
    assert worker.alive()
