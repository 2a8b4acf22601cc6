"""Object-store URLs (`s3://bucket/key`, `gs://bucket/key`, `az://container/key`): telling them
apart, listing a prefix page by page, reading and writing small objects, and naming failures.

Through obstore (Rust's object_store), imported only when an object URL is used: a producer
without the `objects` extra gets ObjectsNotInstalled, naming it, then and never otherwise.
Credentials are each store's standard chain (obstore's own): for S3 the `AWS_*` variables
(keys and session token, web identity, ECS/EKS container credentials), else the instance's
role; `AWS_PROFILE` through boto3 where boto3 is installed. A key is the URL's path as written
(not percent-decoded). One store per process, scheme, bucket and options (`store_for`): a new
one per call would connect, and for a role fetch credentials, again.

The worker reads objects with these stores too (worker/objects.py), with its own timeouts;
core/object_failures.py names what went wrong.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from core import object_failures
from core.contract import IMAGE_EXTENSIONS
from core.errors import ConfigError, ObjectsNotInstalled, ObjectStoreError
from core.settings import ObjectStoreSettings, SettingError, load

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

SCHEMES = ("s3", "gs", "az")
INSTALL = "pip install 'imgqueue[objects]'"
LIST_PAGE = 1000  # ListObjectsV2's own page: one request per page handed back
USER_AGENT = "imgqueue/0.1"
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectURL:
    """`scheme://bucket/key`; `key` is "" for the bucket's root."""

    scheme: str
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    def child(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"


def is_object_url(source: str) -> bool:
    """True for `s3://`, `gs://` and `az://` URLs (any case)."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def is_prefix(source: str) -> bool:
    """An object URL ending in "/": a prefix to list, not one object."""
    return is_object_url(source) and source.endswith("/")


def parse(url: str) -> ObjectURL:
    """The URL's parts; ValueError for one that is not an object URL or names no bucket."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise ValueError(f"not an object-store URL ({', '.join(SCHEMES)}): {url!r}")
    bucket, _, key = rest.partition("/")
    if not bucket or any(c in bucket for c in "?#@\\") or bucket in (".", ".."):
        raise ValueError(f"no valid bucket name in {url!r}")
    return ObjectURL(scheme.lower(), bucket, key)


@dataclass(frozen=True)
class StoreOptions:
    """How a store connects: `endpoint` (S3_ENDPOINT_URL; "" for the default), seconds to
    connect and for one whole request, body included, and the store's own retries."""

    endpoint: str = ""
    connect_timeout: float = 5.0
    timeout: float = 30.0
    retries: int = 3

    @classmethod
    def from_env(cls, **given: Any) -> StoreOptions:
        """S3_ENDPOINT_URL from the environment (core.settings.ObjectStoreSettings)."""
        try:
            settings = load(ObjectStoreSettings)
        except SettingError as exc:
            raise ConfigError(str(exc)) from None
        return cls(endpoint=settings.s3_endpoint_url, **given)


def store_for(location: ObjectURL, options: StoreOptions) -> ObjectStore:
    """The process's store for the location's bucket (made on first use)."""
    # The pid: a forked child makes its own rather than share its parent's connections.
    return _store(os.getpid(), location.scheme, location.bucket, options)


@functools.lru_cache(maxsize=64)
def _store(pid: int, scheme: str, bucket: str, options: StoreOptions) -> ObjectStore:
    try:
        from obstore.store import AzureStore, GCSStore
    except ImportError:
        raise ObjectsNotInstalled(
            f"{scheme}:// sources need obstore: {INSTALL} (the objects extra)"
        ) from None
    client: ClientConfig = {
        "connect_timeout": timedelta(seconds=options.connect_timeout),
        "timeout": timedelta(seconds=options.timeout),
        "user_agent": USER_AGENT,
    }
    retry: RetryConfig = {
        "max_retries": options.retries,
        "retry_timeout": timedelta(seconds=options.timeout),
    }
    try:
        if scheme == "gs":
            return GCSStore(bucket, client_options=client, retry_config=retry)
        if scheme == "az":
            return AzureStore(bucket, client_options=client, retry_config=retry)
        return _s3(bucket, options, client, retry)
    except Exception as exc:  # e.g. an az:// store without AZURE_STORAGE_ACCOUNT_NAME
        reason = str(exc).split("\n", 1)[0][:200]
        raise ConfigError(f"{scheme}://{bucket}: the store cannot be set up: {reason}") from None


def _s3(
    bucket: str, options: StoreOptions, client: ClientConfig, retry: RetryConfig
) -> ObjectStore:
    from obstore.store import S3Store

    endpoint = (
        options.endpoint
        or os.environ.get("AWS_ENDPOINT_URL_S3", "")
        or os.environ.get("AWS_ENDPOINT_URL", "")
    )
    if endpoint.startswith("http://"):
        client["allow_http"] = True
    extra: dict[str, Any] = {"endpoint": options.endpoint} if options.endpoint else {}
    provider = _profile_credentials()
    if provider is not None:
        extra["credential_provider"] = provider
    return S3Store(bucket, client_options=client, retry_config=retry, **extra)


def _profile_credentials() -> Any:
    """boto3's chain for AWS_PROFILE (object_store reads no profile files), where boto3 is
    installed and no keys are in the environment; else None."""
    if not os.environ.get("AWS_PROFILE") or os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    return Boto3CredentialProvider()


def producer_error(
    exc: BaseException, location: ObjectURL, *, listing: bool = False
) -> ObjectStoreError:
    """The producer's exception for an obstore error at `location` (ObjectNotFound,
    ObjectAccessDenied, else ObjectStoreError; core/object_failures.py)."""
    return object_failures.producer_error(exc, str(location), location.bucket, listing=listing)


# -- operations ----------------------------------------------------------------------------


def iter_objects(
    prefix_url: str,
    options: StoreOptions | None = None,
    *,
    suffixes: frozenset[str] | None = None,
) -> Iterator[str]:
    """The URL of every object under the prefix, recursively, in the store's (lexicographic)
    order, a page of LIST_PAGE at a time: the whole listing is never held. `suffixes`: only
    keys ending in one of these (lower case, e.g. IMAGE_EXTENSIONS). Raises ObjectNotFound
    for a bucket that does not exist (an empty prefix yields nothing), ObjectAccessDenied, or
    ObjectStoreError, at the page it failed on."""
    location = parse(prefix_url)
    store = store_for(location, options or StoreOptions.from_env())
    import obstore

    # obstore lists by whole path segments: "a/b" lists a/b/..., never a/bc.
    prefix = location.key.rstrip("/") or None
    pages = iter(obstore.list(store, prefix, chunk_size=LIST_PAGE))
    while True:
        try:
            page = next(pages)
        except StopIteration:
            return
        except Exception as exc:
            raise producer_error(exc, location, listing=True) from None
        for meta in page:
            key = meta["path"]
            if key.endswith("/"):  # a "folder" marker some tools write
                continue
            if suffixes is None or os.path.splitext(key)[1].lower() in suffixes:
                yield location.child(key)


class Expansion(Generic[T]):
    """`sources` with each prefix (`is_prefix`) replaced by the URLs of the images under it
    (IMAGE_EXTENSIONS, as a directory's are), listed page by page as it is iterated; any other
    source as it is. `listed` turns true at the first prefix met."""

    def __init__(self, sources: Iterable[T], options: StoreOptions | None = None) -> None:
        self.sources = sources
        self.options = options
        self.listed = False

    def __iter__(self) -> Iterator[T | str]:
        for source in self.sources:
            if isinstance(source, str) and is_prefix(source):
                self.listed = True
                yield from iter_objects(source, self.options, suffixes=IMAGE_EXTENSIONS)
            else:
                yield source


def get_bytes(url: str, options: StoreOptions | None = None, *, max_bytes: int = 0) -> bytes:
    """The object's bytes; `max_bytes` (0: none) refuses a larger one, by the size the store
    answers before its body is read, with ObjectStoreError. Errors as iter_objects'."""
    location = parse(url)
    store = store_for(location, options or StoreOptions.from_env())
    import obstore

    try:
        result = obstore.get(store, location.key)
        size = int(result.meta["size"])
        if max_bytes and size > max_bytes:
            raise ObjectStoreError(f"{url} is {size} bytes, over the limit of {max_bytes}", url)
        return bytes(result.bytes())
    except ObjectStoreError:
        raise
    except Exception as exc:
        raise producer_error(exc, location) from None


def put_bytes(url: str, data: bytes, options: StoreOptions | None = None) -> None:
    """Write `data` at the URL, whole (an existing object is replaced). Errors as
    iter_objects'."""
    location = parse(url)
    store = store_for(location, options or StoreOptions.from_env())
    import obstore

    try:
        obstore.put(store, location.key, data)
    except Exception as exc:
        raise producer_error(exc, location) from None


def delete(url: str, options: StoreOptions | None = None) -> None:
    """Delete the object (none there is no error). Errors as iter_objects'."""
    location = parse(url)
    store = store_for(location, options or StoreOptions.from_env())
    import obstore

    try:
        obstore.delete(store, location.key)
    except FileNotFoundError:
        return
    except Exception as exc:
        raise producer_error(exc, location) from None
