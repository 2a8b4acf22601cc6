"""Every worker setting, read from the environment in one place.

A setting that is present but malformed stops the worker at start with a ConfigError naming it;
the README's settings table documents each one.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from producer.connections import RedisConfig, RedisConfigError, ResultStoreConfig
from producer.contract import DEFAULT_REDIS_URL
from worker.errors import ConfigError

if TYPE_CHECKING:  # imports torch; settings are read before the model is wanted
    from worker.model.onnx import OnnxOptions

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BACKENDS = ("auto", "torch", "onnxruntime")  # worker/model/onnx.py
ONNX_SPINNING = ("pass", "on", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# Parsers: each setting declares its own (starlette's `Config(cast=...)`), raising ValueError.
T = TypeVar("T")


def boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def lower(raw: str) -> str:
    return raw.lower()


def upper(raw: str) -> str:
    return raw.upper()


def path(raw: str) -> Path:
    return Path(raw).expanduser()


def formats(raw: str) -> tuple[str, ...]:
    return tuple(p.strip().upper() for p in raw.split(",") if p.strip())


def networks(raw: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(p.strip()) for p in raw.split(",") if p.strip())


def env(default: T, parse: Callable[[str], T]) -> T:
    """A setting read from the environment variable of its upper-cased name by `parse`."""
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults are not settings")
    made: T = field(default=default, metadata={"parse": parse})
    return made


def webhook_keys(raw: str) -> tuple[bytes, ...]:
    """WEBHOOK_SECRET's signing keys: each space-separated word is Standard Webhooks'
    `whsec_<base64 of the key>`, or else raw text whose UTF-8 bytes are the key. Raises a
    ConfigError that never quotes the secret."""
    keys = []
    for n, word in enumerate(raw.split(), 1):
        if word.startswith("whsec_"):
            try:
                key = base64.b64decode(word[len("whsec_") :], validate=True)
            except ValueError:  # binascii.Error included
                raise ConfigError(
                    f"WEBHOOK_SECRET: secret {n} starts with whsec_ but the rest is not base64"
                ) from None
        else:
            key = word.encode()
        if len(key) < 16:
            raise ConfigError(
                f"WEBHOOK_SECRET: secret {n} is {len(key)} bytes; use at least 16 (24 to 64 "
                "random bytes, e.g. `whsec_$(openssl rand -base64 32)`)"
            )
        keys.append(key)
    return tuple(keys)


def _gpu_visible() -> bool:
    # Only for picking defaults in the parent process: a device node check never touches CUDA.
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES") != ""


@dataclass(frozen=True)
class Settings:
    """The worker's configuration; build it with `Settings.from_env()`."""

    redis_url: str = env(DEFAULT_REDIS_URL, str)
    redis_sentinel_master: str = env("", str)  # sentinel:// only: the master's name
    redis_key_prefix: str = env("", str)  # kombu's global_keyprefix, for broker and results alike
    # Where results go (empty: REDIS_URL); may be a Redis Cluster (producer.connections).
    result_url: str = env("", str)
    result_sentinel_master: str = env("", str)  # empty: REDIS_SENTINEL_MASTER
    # On a cluster: replicas that must have a final state before the job is acknowledged
    # (None: 1 on a cluster, 0 elsewhere), and the longest wait for them.
    result_wait_replicas: int | None = env(None, int)
    result_wait_timeout_ms: int = env(1000, int)
    # The architecture: any torchvision classification model (docs/models.md), or sleep:<ms>ms
    model: str = env("resnet50", lower)
    model_weights: str = env("IMAGENET1K_V2", str)
    # A labels file (lines, a JSON list, or a JSON object index -> name); empty: the weights'
    model_labels: Path | None = env(None, path)
    # One JSON file naming the architecture, weights, labels, version and preprocessing
    model_card: Path | None = env(None, path)
    # The name producers route by (submit(model=...)): empty, the card's name, else the default
    # model on the default queue
    model_name: str = env("", str)
    # The torchvision weights enum whose reference transforms apply (empty: the weights' own,
    # else the architecture's default)
    preprocess: str = env("", upper)
    device: str = env("auto", lower)
    # auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32
    precision: str = env("auto", lower)
    # auto: ONNX Runtime on a CPU where it is installed and runs the precision (fp32), else torch
    backend: str = env("auto", lower)
    # Where ONNX exports are kept, one per weights identity, shared by a host's workers
    # (None: $XDG_CACHE_HOME/imgqueue/onnx, else ~/.cache/imgqueue/onnx)
    onnx_cache_dir: Path | None = env(None, path)
    # How ONNX Runtime's idle threads wait: pass (spin within a pass only), on, off
    onnx_spinning: str = env("pass", lower)
    image_root: Path | None = env(None, path)

    pool: str = env("threads", lower)
    max_batch_size: int = env(0, int)  # 0: per device, see effective_batch_size
    max_batch_delay_ms: float = env(5.0, float)
    # 0: twice the batch size, so one batch decodes while one infers
    concurrency: int = env(0, int)
    prefetch_multiplier: int = env(1, int)
    # The JPEG decoder shrinks 1/2..1/8, never below the resize size (docs/performance.md)
    draft_decode: bool = env(True, boolean)
    # CUDA only: JPEGs decoded by nvJPEG, Pillow as the fallback
    gpu_decode: bool = env(True, boolean)

    # Decoding runs in DECODE_PROCESSES child processes (worker/sandbox), each limited to
    # DECODE_MEMORY_LIMIT bytes of address space (0: sized from the machine), with a deadline
    # of DECODE_TIMEOUT for the header plus DECODE_SECONDS_PER_MEGAPIXEL of image area.
    decode_sandbox: bool = env(True, boolean)
    decode_processes: int = env(0, int)
    decode_memory_limit: int = env(0, int)
    decode_timeout: float = env(1.0, float)
    decode_seconds_per_megapixel: float = env(0.1, float)
    max_image_bytes: int = env(50 * 1024 * 1024, int)
    max_image_pixels: int = env(64_000_000, int)
    allowed_formats: tuple[str, ...] = env(DEFAULT_FORMATS, formats)

    fetch_connect_timeout: float = env(5.0, float)
    fetch_read_timeout: float = env(10.0, float)
    fetch_total_timeout: float = env(30.0, float)
    fetch_max_redirects: int = env(5, int)
    fetch_retries: int = env(3, int)
    # First retry delay in seconds; doubles each retry
    fetch_retry_backoff: float = env(1.0, float)
    fetch_allow_networks: tuple[IPNetwork, ...] = env((), networks)

    # The webhook dispatcher (python -m worker.webhooks; docs/lifecycle.md, Webhooks). The
    # signing secret: Standard Webhooks' `whsec_<base64>`, or raw text; several, space
    # separated, each sign every delivery while keys rotate. Never in a repr or a message.
    webhook_secret: str = field(default="", repr=False, metadata={"parse": str})
    webhook_timeout: float = env(10.0, float)  # one attempt, connecting to the last byte
    webhook_max_attempts: int = env(10, int)  # then the delivery is dead-lettered
    webhook_retry_backoff: float = env(5.0, float)  # first retry delay; doubles, at most 1 h
    webhook_concurrency: int = env(16, int)  # deliveries at once (threads)

    result_expires: int = env(86_400, int)
    result_failure_expires: int | None = env(None, int)  # None: RESULT_EXPIRES
    # Completion events (worker/events.py): entries kept in the stream (XADD MAXLEN ~); 0: none
    events_maxlen: int = env(100_000, int)
    visibility_timeout: int = env(3_600, int)  # last resort for a live but hung job; see docs
    max_deliveries: int = env(3, int)
    # The delivery layer (worker/broker): a process silent this long is dead, and any live
    # worker returns its messages to their queues.
    dead_worker_timeout: float = env(15.0, float)
    # Idle wait on the first queue before checking all lists again
    broker_poll_interval: float = env(0.5, float)
    max_message_bytes: int = env(1024 * 1024, int)
    dead_letter_limit: int = env(10_000, int)
    result_cache: bool = env(True, boolean)
    result_cache_ttl: int = env(86_400, int)
    metrics_port: int = env(0, int)
    metrics_addr: str = env("0.0.0.0", str)
    ready_file: Path | None = env(None, path)
    log_level: str = env("", upper)  # empty: Celery's -l; set, it wins over -l
    # Off by default: three events per job cost ~15% throughput on a 2-core CPU. Flower turns
    # them on at runtime anyway; the compose file sets TASK_EVENTS=true.
    task_events: bool = env(False, boolean)
    # A job waits this long for its batch before the inference thread counts as hung.
    inference_timeout: float = env(120.0, float)
    # Tests only: a job whose source equals this SIGKILLs its own worker process (empty: off).
    test_poison_source: str = env("", str)
    # Tests only: inference raises a fatal error from the Nth batch on (0: off).
    test_fatal_inference_after: int = env(0, int)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = source.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            try:
                values[f.name] = f.metadata["parse"](raw.strip())
            except ValueError as exc:
                raise ConfigError(f"{f.name.upper()}={raw.strip()!r} is invalid: {exc}") from exc
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        base_device = self.device.split(":", 1)[0]
        if base_device not in DEVICES or (":" in self.device and base_device != "cuda"):
            raise ConfigError(f"DEVICE must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if ":" in self.device and not self.device.split(":", 1)[1].isdigit():
            raise ConfigError(f"DEVICE must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.pool not in ("threads", "prefork", "solo"):
            raise ConfigError(f"POOL must be threads, prefork or solo, got {self.pool!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"PRECISION must be one of {', '.join(PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"BACKEND must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "onnxruntime" and self.precision not in ("auto", "fp32"):
            raise ConfigError(
                f"BACKEND=onnxruntime runs PRECISION=fp32 only, not {self.precision}; "
                "BACKEND=auto runs other precisions on torch"
            )
        if self.backend == "onnxruntime" and self.device.startswith("cuda"):
            raise ConfigError("BACKEND=onnxruntime runs on the CPU only; use DEVICE=cpu")
        if self.onnx_spinning not in ONNX_SPINNING:
            raise ConfigError(f"ONNX_SPINNING must be one of {', '.join(ONNX_SPINNING)}")
        cache_dir = self.onnx_cache_dir
        if cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
            raise ConfigError(f"ONNX_CACHE_DIR {str(cache_dir)!r} is not a directory")
        if self.image_root is not None and not self.image_root.is_dir():
            raise ConfigError(f"IMAGE_ROOT {str(self.image_root)!r} is not a directory")
        try:
            self.redis_config.validate()
            store = self.result_config
        except RedisConfigError as exc:
            raise ConfigError(str(exc)) from exc
        if self.result_wait_replicas is not None and not 0 <= self.result_wait_replicas <= 16:
            raise ConfigError("RESULT_WAIT_REPLICAS must be within 0..16")
        if self.result_wait_replicas and not store.cluster:
            raise ConfigError(
                "RESULT_WAIT_REPLICAS applies to a Redis Cluster result store (RESULT_URL="
                "redis-cluster://...); for Sentinel see docs/reliability.md"
            )
        if not 1 <= self.result_wait_timeout_ms <= 60_000:
            raise ConfigError("RESULT_WAIT_TIMEOUT_MS must be within 1..60000")
        if not 1 <= self.dead_worker_timeout <= 3600:
            raise ConfigError("DEAD_WORKER_TIMEOUT must be within 1..3600 seconds")
        if not 0.01 <= self.broker_poll_interval <= 5:
            raise ConfigError("BROKER_POLL_INTERVAL must be within 0.01..5 seconds")
        if self.max_message_bytes < 1024 or self.dead_letter_limit < 1:
            raise ConfigError("MAX_MESSAGE_BYTES must be >= 1024 and DEAD_LETTER_LIMIT >= 1")
        if self.decode_timeout <= 0 or self.decode_seconds_per_megapixel < 0:
            raise ConfigError("DECODE_TIMEOUT must be positive, DECODE_SECONDS_PER_MEGAPIXEL >= 0")
        if self.decode_processes < 0 or (
            self.decode_memory_limit and self.decode_memory_limit < 128 * 1024 * 1024
        ):
            raise ConfigError("DECODE_PROCESSES must be >= 0, DECODE_MEMORY_LIMIT >= 128 MiB")
        if self.inference_timeout <= 0:
            raise ConfigError("INFERENCE_TIMEOUT must be positive")
        if self.result_failure_expires is not None and self.result_failure_expires < 0:
            raise ConfigError("RESULT_FAILURE_EXPIRES must not be negative")
        if self.events_maxlen < 0:
            raise ConfigError("EVENTS_MAXLEN must not be negative (0 turns events off)")
        for name in ("max_batch_size", "concurrency", "max_image_bytes", "max_image_pixels"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.upper()} must not be negative")
        if self.visibility_timeout < 1 or self.fetch_retry_backoff < 0:
            raise ConfigError(
                "VISIBILITY_TIMEOUT must be positive, FETCH_RETRY_BACKOFF not negative"
            )
        if self.result_cache_ttl < 0 or not 0 <= self.metrics_port <= 65535:
            raise ConfigError("RESULT_CACHE_TTL must be >= 0 and METRICS_PORT within 0..65535")
        if self.log_level not in ("", *LOG_LEVELS):
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        webhook_keys(self.webhook_secret)  # raises ConfigError, never quoting it
        if not 0.1 <= self.webhook_timeout <= 300 or self.webhook_retry_backoff < 0:
            raise ConfigError(
                "WEBHOOK_TIMEOUT must be within 0.1..300 seconds, WEBHOOK_RETRY_BACKOFF >= 0"
            )
        if not 1 <= self.webhook_max_attempts <= 100 or not 1 <= self.webhook_concurrency <= 1024:
            raise ConfigError(
                "WEBHOOK_MAX_ATTEMPTS must be within 1..100, WEBHOOK_CONCURRENCY within 1..1024"
            )
        if self.max_deliveries < 1 or self.prefetch_multiplier < 1:
            raise ConfigError("MAX_DELIVERIES and PREFETCH_MULTIPLIER must be at least 1")

    @property
    def redis_config(self) -> RedisConfig:
        return RedisConfig(self.redis_url, self.redis_sentinel_master, self.redis_key_prefix)

    @property
    def result_config(self) -> ResultStoreConfig:
        """Where results are stored (validated; raises RedisConfigError)."""
        return ResultStoreConfig.resolve(
            self.redis_config, self.result_url, self.result_sentinel_master
        )

    @property
    def effective_result_wait_replicas(self) -> int:
        if self.result_wait_replicas is not None:
            return self.result_wait_replicas
        return 1 if self.result_config.cluster else 0

    @property
    def expects_gpu(self) -> bool:
        return self.device.startswith("cuda") or (self.device == "auto" and _gpu_visible())

    @property
    def onnx_options(self) -> OnnxOptions:
        from worker.model.onnx import OnnxOptions

        return OnnxOptions(self.onnx_cache_dir, self.onnx_spinning)

    @property
    def effective_batch_size(self) -> int:
        if self.max_batch_size:
            return self.max_batch_size
        return 64 if self.expects_gpu else 8

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency or max(4, 2 * self.effective_batch_size)
