"""Every worker setting, read from the environment in one place.

A setting that is present but malformed stops the worker at start with a ConfigError naming it;
docs/settings.md, generated from the declarations below, documents each one. What the webhook
dispatcher reads too is declared once in core.settings; its own are
services/webhooks/settings.py's (the worker never signs: it reads no WEBHOOK_*).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.connections import Connected, RedisConfigError
from core.settings import (
    DeliverySettings,
    ObjectStoreSettings,
    ProcessSettings,
    RetentionSettings,
    SettingError,
    UrlPolicySettings,
    env,
    parsed,
    upper,
)
from worker.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BACKENDS = ("auto", "torch", "onnxruntime")  # worker/model/onnx.py
ONNX_SPINNING = ("pass", "on", "off")
DEFAULT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")


# Parsers: each setting declares its own (starlette's `Config(cast=...)`), raising ValueError;
# `env` declares a setting (core/settings.py).


def boolean(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def lower(raw: str) -> str:
    return raw.lower()


def path(raw: str) -> Path:
    return Path(raw).expanduser()


def formats(raw: str) -> tuple[str, ...]:
    return tuple(p.strip().upper() for p in raw.split(",") if p.strip())


def _gpu_visible() -> bool:
    # Only for picking defaults in the parent process: a device node check never touches CUDA.
    return os.path.exists("/dev/nvidiactl") and os.environ.get("CUDA_VISIBLE_DEVICES") != ""


@dataclass(frozen=True)
class OnnxOptions:
    """The ONNX Runtime backend's settings (worker/model/onnx.py; here, where they are read,
    since that module imports torch): ONNX_CACHE_DIR (None: the default), ONNX_SPINNING, and
    the intra-op threads (0: torch.get_num_threads())."""

    cache_dir: Path | None = None
    spinning: str = ONNX_SPINNING[0]
    threads: int = 0


@dataclass(frozen=True)
class Settings(
    Connected,
    DeliverySettings,
    ObjectStoreSettings,
    RetentionSettings,
    ProcessSettings,
    UrlPolicySettings,
):
    """The worker's configuration; build it with `Settings.from_env()`.

    Shared declarations live in core.settings: where Redis is (REDIS_URL, RESULT_URL, ...) in
    ConnectionSettings (producers and services read them too), DEAD_WORKER_TIMEOUT in
    DeliverySettings (the exporter and `imgqueue status` too), S3_ENDPOINT_URL in
    ObjectStoreSettings (producers and the gateway too); EVENTS_MAXLEN and DEAD_LETTER_LIMIT
    in RetentionSettings, METRICS_PORT, METRICS_ADDR and LOG_LEVEL in ProcessSettings,
    FETCH_CONNECT_TIMEOUT and FETCH_ALLOW_NETWORKS in UrlPolicySettings (the webhook
    dispatcher reads those too)."""

    result_wait_replicas: int | None = env(
        None,
        int,
        "cluster only: replicas that must have a final state (`WAIT`) before the job is"
        " acknowledged; `0` turns it off",
        shown="`1` on a cluster, else `0`",
    )
    result_wait_timeout_ms: int = env(
        1000,
        int,
        "the longest `WAIT`; past it (a master without a live replica) the store goes on,"
        " logged, and that master is waited on again after 5 s",
    )
    model: str = env(
        "resnet50",
        lower,
        "any torchvision classification architecture (`efficientnet_v2_s`, `convnext_tiny`,"
        " `vit_b_16`, ...; docs/models.md); `sleep:50ms` is a fixed-latency stand-in for"
        " benchmarks and tests only",
    )
    model_weights: str = env(
        "IMAGENET1K_V2",
        str,
        "`IMAGENET1K_V2`, `IMAGENET1K_V1` (or another weights name of `MODEL`'s own), a saved"
        " `state_dict` file for offline hosts, or `random:SEED` (tests and offline demos only;"
        " results carry a `warning`)",
    )
    model_labels: Path | None = env(
        None,
        path,
        "a labels file: one per line, a JSON list, or a JSON object index → name (unset: the"
        " weights' ImageNet categories)",
    )
    model_card: Path | None = env(
        None,
        path,
        "one JSON file naming the architecture, weights (with sha256), labels, version and"
        " preprocessing (docs/models.md)",
    )
    model_name: str = env(
        "",
        str,
        "the name producers route by (`model=`); unset without a card: the default model on the"
        " `celery` queue",
        shown="the card's name",
    )
    preprocess: str = env(
        "",
        upper,
        "a torchvision weights name whose reference transforms a weights file or `random:SEED`"
        " uses (default: the architecture's default weights)",
        shown="the weights' own",
    )
    device: str = env("auto", lower, "`auto` (first GPU if any, else CPU), `cpu`, `cuda`, `cuda:N`")
    precision: str = env(
        "auto",
        lower,
        "`auto` (fp16 on CUDA; bf16 on CPUs with AVX512-BF16 or AMX when a timing at load"
        " confirms it is faster; else fp32), `fp32`, `bf16`, `fp16`, `int8` (CPU); only `fp32`"
        " matches the reference (docs/performance.md, *Fidelity*)",
    )
    backend: str = env(
        "auto",
        lower,
        "`auto` (ONNX Runtime on a CPU at fp32, where installed; torch on CUDA and for bf16,"
        " fp16, int8), `torch`, `onnxruntime` (CPU, fp32); results say which ran"
        " (docs/performance.md)",
    )
    onnx_cache_dir: Path | None = env(
        None,
        path,
        "where a model's ONNX export is kept, one per weights, shared by a host's workers",
        shown="`$XDG_CACHE_HOME/imgqueue/onnx`, else `~/.cache/imgqueue/onnx`",
    )
    onnx_spinning: str = env(
        "pass",
        lower,
        "how ONNX Runtime's idle threads wait: `pass` (spin within a forward pass only), `on`,"
        " `off`",
    )
    image_root: Path | None = env(
        None, path, "the only folder local paths may be read from; unset: local paths refused"
    )

    pool: str = env(
        "threads",
        lower,
        "Celery pool: `threads` (one model, batched), `prefork` (a model per child, batch of 1"
        " each), `solo`",
    )
    max_batch_size: int = env(0, int, "largest inference batch", shown="`0` = 8 on CPU, 64 on GPU")
    max_batch_delay_ms: float = env(
        5.0,
        float,
        "longest wait for batch partners (on the CPU, jobs already decoding: up to 0.1 s);"
        " skipped when no other job is being fetched or decoded",
    )
    # Twice the batch size, so one batch decodes while one infers
    concurrency: int = env(0, int, "task threads per worker process", shown="`0` = 2 x batch size")
    prefetch_multiplier: int = env(
        1, int, "messages reserved per thread; keeps one worker from hoarding the queue"
    )
    draft_decode: bool = env(
        True,
        boolean,
        "let the JPEG decoder shrink large photos by 1/2, 1/4 or 1/8 while decoding, never below"
        " the resize size; `false` for the reference's pixels (docs/performance.md, *Fidelity*)",
    )
    gpu_decode: bool = env(
        True,
        boolean,
        "on CUDA, decode JPEGs on the GPU (`torchvision.io.decode_jpeg`, nvJPEG), Pillow as the"
        " fallback",
    )

    # Decoding runs in DECODE_PROCESSES child processes (worker/sandbox), each limited to
    # DECODE_MEMORY_LIMIT bytes of address space, with a deadline of DECODE_TIMEOUT for the
    # header plus DECODE_SECONDS_PER_MEGAPIXEL of image area.
    decode_sandbox: bool = env(
        True, boolean, "`false` decodes inside the worker process (no limits; debugging only)"
    )
    decode_processes: int = env(
        0,
        int,
        "decode processes per worker process; a job finding them all busy waits (the memory"
        " budget)",
        shown="`0` = one per core (≤ 8)",
    )
    decode_memory_limit: int = env(
        0,
        int,
        "bytes of address space per decode process; an image needing more fails `TooLarge`",
        shown="`0` = ¼ of RAM shared, 512 MiB to 4 GiB each",
    )
    decode_timeout: float = env(
        1.0,
        float,
        "seconds to read an image's header; the pixels get this plus"
        " `DECODE_SECONDS_PER_MEGAPIXEL` per megapixel; else `DecodeTimeout`",
    )
    decode_seconds_per_megapixel: float = env(
        0.1, float, "seconds of decoding allowed per megapixel, on top of `DECODE_TIMEOUT`"
    )
    max_image_bytes: int = env(50 * 1024 * 1024, int, "bytes per image, enforced while streaming")
    max_image_pixels: int = env(64_000_000, int, "width x height, checked before decoding")
    allowed_formats: tuple[str, ...] = env(DEFAULT_FORMATS, formats, "decodable formats")

    fetch_read_timeout: float = env(10.0, float, "seconds between bytes of a URL's answer")
    fetch_total_timeout: float = env(
        30.0, float, "seconds for a whole URL fetch (or object read, docs/objects.md)"
    )
    fetch_max_redirects: int = env(5, int, "redirect hops, each one vetted")
    fetch_retries: int = env(
        3,
        int,
        "retries of transient fetch errors: resets, timeouts, DNS hiccups, 429, 5xx",
    )
    fetch_retry_backoff: float = env(
        1.0, float, "seconds before the first retry; doubles each retry"
    )
    result_expires: int = env(
        86_400,
        int,
        "seconds results stay in Redis; a GPU fleet needs minutes, not a day (the compose file"
        " and `deploy/k8s` set 900; docs/capacity.md)",
    )
    result_failure_expires: int | None = env(
        None, int, "seconds a `FAILURE` result stays", shown="`RESULT_EXPIRES`"
    )
    visibility_timeout: int = env(
        3_600,
        int,
        "last resort for a job hung in a live worker: it goes back to its queue after this many"
        " seconds. Keep it above your longest job",
    )
    max_deliveries: int = env(
        3,
        int,
        "starts allowed per job before it fails with `JobLost` (its worker died each time)",
    )
    broker_poll_interval: float = env(
        0.5,
        float,
        "an idle worker wakes at once for its first queue at priority 0, within this many"
        " seconds for other queues and priorities",
    )
    max_message_bytes: int = env(
        1024 * 1024, int, "larger messages go to the dead-letter list unread"
    )
    result_cache: bool = env(
        True, boolean, "reuse the result for identical image bytes + model setup + `top_k`"
    )
    result_cache_ttl: int = env(
        86_400, int, "seconds a cached result lives; `0` also turns the cache off"
    )
    ready_file: Path | None = env(
        None, path, "file written once the model is loaded and warm, removed at shutdown"
    )
    task_events: bool = env(
        False,
        boolean,
        "send task events (Flower); costs ~15% throughput on 2 CPU cores; on in the compose"
        " file, and Flower or `celery -A worker control enable_events` turn them on at runtime",
    )
    inference_timeout: float = env(
        120.0,
        float,
        "seconds a job waits for its batch before the worker counts its model as hung (jobs"
        " retry elsewhere, the worker exits 1)",
    )
    test_poison_source: str = env(
        "",
        str,
        "tests only: a job with exactly this source SIGKILLs its worker; never set in production",
    )
    test_fatal_inference_after: int = env(
        0,
        int,
        "tests only: inference fails fatally from that batch on; never set in production",
    )
    test_kill_after_result: bool = env(
        False,
        boolean,
        "tests only: on a Redis Cluster result store, a worker SIGKILLs itself right after"
        " storing final states, before their events; never set in production",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        try:
            values = parsed(cls, environ)
        except SettingError as exc:
            raise ConfigError(str(exc)) from exc
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raises a ConfigError naming the first setting out of bounds."""
        self._check_runtime()
        self._check_stores()
        self._check_limits()

    def _check_runtime(self) -> None:
        """What runs the model and where: device, pool, precision, backend, local paths."""
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

    def _check_stores(self) -> None:
        """The broker and the result store (core.connections), and waiting on replicas."""
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

    def _check_limits(self) -> None:
        """Timeouts, sizes and counts: each within its range."""
        for shared in (DeliverySettings, RetentionSettings, ProcessSettings):
            try:
                shared.validate(self)  # DEAD_WORKER_TIMEOUT, EVENTS_MAXLEN, METRICS_PORT, ...
            except SettingError as exc:
                raise ConfigError(str(exc)) from exc
        if not 0.01 <= self.broker_poll_interval <= 5:
            raise ConfigError("BROKER_POLL_INTERVAL must be within 0.01..5 seconds")
        if self.max_message_bytes < 1024:
            raise ConfigError("MAX_MESSAGE_BYTES must be >= 1024")
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
        if self.result_cache_ttl < 0:
            raise ConfigError("RESULT_CACHE_TTL must be >= 0")
        if self.max_deliveries < 1 or self.prefetch_multiplier < 1:
            raise ConfigError("MAX_DELIVERIES and PREFETCH_MULTIPLIER must be at least 1")

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
        return OnnxOptions(self.onnx_cache_dir, self.onnx_spinning)

    @property
    def effective_batch_size(self) -> int:
        if self.max_batch_size:
            return self.max_batch_size
        return 64 if self.expects_gpu else 8

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency or max(4, 2 * self.effective_batch_size)
