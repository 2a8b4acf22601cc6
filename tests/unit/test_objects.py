"""Object-store sources, in this process: object URLs, prefixes and their parts, and the store's
answers classified into errors (tests/integration/test_objects.py: against the loopback S3)."""

from __future__ import annotations

import pytest

from core import object_failures, objects


def test_object_urls_prefixes_and_their_parts() -> None:
    assert objects.is_object_url("s3://b/k.jpg") and objects.is_object_url("GS://b/k")
    assert objects.is_object_url("az://container/k")
    assert not objects.is_object_url("https://b/k") and not objects.is_object_url("s3:b/k")
    assert objects.is_prefix("s3://b/photos/") and objects.is_prefix("s3://b/")
    assert not objects.is_prefix("s3://b/photo.jpg") and not objects.is_prefix("/dir/")
    assert objects.parse("S3://b/a/b c.jpg") == objects.ObjectURL("s3", "b", "a/b c.jpg")
    for bad in ("s3:///key", "s3://", "https://b/k", "s3://u@b/k"):
        with pytest.raises(ValueError):
            objects.parse(bad)


def test_errors_are_classified_from_the_stores_answer() -> None:
    from obstore.exceptions import GenericError, PermissionDeniedError

    classify = object_failures.classify
    status = "Server returned non-2xx status code: {} Forbidden: <Code>{}</Code>"
    denied = classify(GenericError(status.format(403, "AccessDenied")), listing=True)
    assert (denied.kind, denied.transient) == ("denied", False)
    assert classify(PermissionDeniedError("for path k")).kind == "denied"
    busy = classify(GenericError(status.format(503, "SlowDown")))
    assert (busy.kind, busy.transient) == ("unavailable", True)
    assert classify(GenericError(status.format(404, "NoSuchBucket"))).kind == "no-bucket"
    imds = classify(GenericError("PUT http://169.254.169.254/latest/api/token: 403"))
    assert (imds.kind, imds.transient) == ("credentials", False)
