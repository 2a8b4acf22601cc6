"""Every worker setting, read from the environment in one place.

A setting that is present but malformed stops the worker at start with a ConfigError naming it;
the README's settings table documents each one.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from producer.connections import RedisConfig, RedisConfigError
from producer.contract import DEFAULT_REDIS_URL
from worker.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _gpu_visible() -> bool:
    # Only for picking defaults in the parent process: a device node check never touches CUDA.
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES") != ""


@dataclass(frozen=True)
class Settings:
    """The worker's configuration; build it with `Settings.from_env()`."""

    redis_url: str = DEFAULT_REDIS_URL
    redis_sentinel_master: str = ""  # sentinel:// only: the master's name
    redis_key_prefix: str = ""  # kombu's global_keyprefix, for broker and results alike
    model: str = "resnet50"
    model_weights: str = "IMAGENET1K_V2"
    preprocess: str = "IMAGENET1K_V2"
    device: str = "auto"
    precision: str = "auto"  # fp16 on CUDA, bf16 on CPUs with native bf16, else fp32
    image_root: Path | None = None

    pool: str = "threads"
    max_batch_size: int = 0  # 0: per device, see effective_batch_size
    max_batch_delay_ms: float = 5.0
    concurrency: int = 0  # 0: twice the batch size, so one batch decodes while one infers
    prefetch_multiplier: int = 1
    draft_decode: bool = True  # JPEG decoder shrinks 1/2..1/8, never below the resize size
    gpu_decode: bool = True  # CUDA only: JPEGs decoded by nvJPEG, Pillow as the fallback

    # Decoding runs in DECODE_PROCESSES child processes (worker/sandbox), each limited to
    # DECODE_MEMORY_LIMIT bytes of address space (0: sized from the machine), with a deadline
    # of DECODE_TIMEOUT for the header plus DECODE_SECONDS_PER_MEGAPIXEL of image area.
    decode_sandbox: bool = True
    decode_processes: int = 0
    decode_memory_limit: int = 0
    decode_timeout: float = 1.0
    decode_seconds_per_megapixel: float = 0.1
    max_image_bytes: int = 50 * 1024 * 1024
    max_image_pixels: int = 64_000_000
    allowed_formats: tuple[str, ...] = DEFAULT_FORMATS

    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 10.0
    fetch_total_timeout: float = 30.0
    fetch_max_redirects: int = 5
    fetch_retries: int = 3
    fetch_retry_backoff: float = 1.0  # first retry delay in seconds; doubles each retry
    fetch_allow_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    result_expires: int = 86_400
    result_failure_expires: int | None = None  # None: RESULT_EXPIRES
    visibility_timeout: int = 3_600  # last resort for a live but hung job; see docs
    max_deliveries: int = 3
    # The delivery layer (worker/broker): a process silent this long is dead, and any live
    # worker returns its messages to their queues.
    dead_worker_timeout: float = 15.0
    broker_poll_interval: float = 0.5  # idle wait on the first queue before checking all lists
    max_message_bytes: int = 1024 * 1024
    dead_letter_limit: int = 10_000
    result_cache: bool = True
    result_cache_ttl: int = 86_400
    metrics_port: int = 0
    metrics_addr: str = "0.0.0.0"
    ready_file: Path | None = None
    log_level: str = ""  # empty: Celery's -l; set, it wins over -l
    # Off by default: three events per job cost ~15% throughput on a 2-core CPU. Flower turns
    # them on at runtime anyway; the compose file sets TASK_EVENTS=true.
    task_events: bool = False
    # A job waits this long for its batch before the inference thread counts as hung.
    inference_timeout: float = 120.0
    # Tests only: a job whose source equals this SIGKILLs its own worker process (empty: off).
    test_poison_source: str = ""
    # Tests only: inference raises a fatal error from the Nth batch on (0: off).
    test_fatal_inference_after: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(f.name, raw.strip())
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
        if self.image_root is not None and not self.image_root.is_dir():
            raise ConfigError(f"IMAGE_ROOT {str(self.image_root)!r} is not a directory")
        try:
            self.redis_config.validate()
        except RedisConfigError as exc:
            raise ConfigError(str(exc)) from exc
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
        if self.max_deliveries < 1 or self.prefetch_multiplier < 1:
            raise ConfigError("MAX_DELIVERIES and PREFETCH_MULTIPLIER must be at least 1")

    @property
    def redis_config(self) -> RedisConfig:
        return RedisConfig(self.redis_url, self.redis_sentinel_master, self.redis_key_prefix)

    @property
    def expects_gpu(self) -> bool:
        return self.device.startswith("cuda") or (self.device == "auto" and _gpu_visible())

    @property
    def effective_batch_size(self) -> int:
        if self.max_batch_size:
            return self.max_batch_size
        return 64 if self.expects_gpu else 8

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency or max(4, 2 * self.effective_batch_size)


def _parse(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind in ("int", "int | None"):
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind == "Path | None":
            return Path(raw).expanduser()
        if name == "allowed_formats":
            return tuple(p.strip().upper() for p in raw.split(",") if p.strip())
        if name == "fetch_allow_networks":
            return tuple(ipaddress.ip_network(p.strip()) for p in raw.split(",") if p.strip())
        if name in ("precision", "device", "log_level", "pool"):
            return raw.lower() if name != "log_level" else raw.upper()
        return raw
    except ValueError as exc:
        raise ConfigError(f"{name.upper()}={raw!r} is invalid: {exc}") from exc
