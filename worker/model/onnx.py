"""ONNX Runtime on the CPU: the float model, exported once per weights identity, run by a session.

The export (`torch.onnx.export`, TorchScript exporter, opset 17, a dynamic batch axis) runs where
the model loads, on the CPU, in fp32. Its result is cached in ONNX_CACHE_DIR under a name derived
from everything that decides the graph (architecture, weights, number of labels, input size,
opset, the torch and onnxruntime versions), so later starts and every process of a host reuse it:

* an entry is a directory (`model.onnx`, `export.json`) made under a temporary name and renamed
  into place, so it appears whole or not at all and a reader never sees half a file;
* a lock file per entry lets one process export while the others wait for it (past
  LOCK_WAIT_S they export under their own temporary name: slower, never wrong);
* each load checks the session against the torch model on a probe batch and refuses one that
  differs by more than PROBE_TOLERANCE (the project's fp32 promise), re-exporting a cached entry
  once before giving up;
* each load marks its entry as used; an export removes entries unused for UNUSED_DAYS.

Anything that fails raises OnnxUnavailable, naming what; the classifier then stays on torch and
says so (worker/model/classifier.py). Knows nothing of Celery.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from worker.errors import ConfigError
from worker.model.spec import ModelSpec
from worker.settings import BACKENDS, ONNX_SPINNING
from worker.settings import OnnxOptions as OnnxOptions  # read with the settings (no torch)

log = logging.getLogger(__name__)

# What ONNX Runtime runs here. bf16 and int8 stay on torch: their fidelity on ONNX Runtime has
# not been measured as that of torch's has (docs/performance.md).
ORT_PRECISIONS = ("fp32",)
PACKAGES = ("onnxruntime", "onnx")
OPSET = 17
# Bump when the exported graph changes for the same inputs (names, axes, exporter options).
EXPORT_FORMAT = 1
MODEL_FILE = "model.onnx"
META_FILE = "export.json"
UNUSED_DAYS = 30  # an entry no load has touched for this long goes at the next export
# Probabilities may differ from torch's by this much on the probe batch: the fp32 promise;
# logits by this much relative to the largest (float sums in another order differ by ~1e-6).
PROBE_TOLERANCE = 1e-5
LOGIT_TOLERANCE = 1e-3
LOCK_WAIT_S = 900.0

# Threads, by measurement on a 2-core AMD EPYC (Zen 3), decode processes and task threads on
# the same cores (docs/performance.md, "ONNX Runtime"): one intra-op thread per core the
# inference thread may use (torch.get_num_threads(), so OMP_NUM_THREADS applies to both), no
# inter-op parallelism (these graphs are one chain of operators). ONNX_SPINNING: how its idle
# threads wait, as (session.intra_op.allow_spinning, session.force_spinning_stop):
SPINNING = {
    "pass": ("1", "1"),  # spin between the operators of a pass, stop as soon as it returns
    "on": ("1", "0"),  # ONNX Runtime's default: spin on after a pass too
    "off": ("0", "0"),  # sleep whenever there is nothing to do
}
DEFAULT_SPINNING = "pass"
assert tuple(SPINNING) == ONNX_SPINNING


class OnnxUnavailable(Exception):
    """The model cannot run on ONNX Runtime here: the message says why in full (for the log),
    `summary` in a few words without paths (for results)."""

    def __init__(self, message: str, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


def missing_packages() -> list[str]:
    """The packages the backend needs that are not installed (the worker extra has them)."""
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]


def pick_backend(setting: str, device: torch.device, precision: str) -> tuple[str, str]:
    """(backend, why) for BACKEND=`setting`, a resolved device and precision. BACKEND=onnxruntime
    where it cannot run raises ConfigError; auto says why it keeps torch."""
    if setting not in BACKENDS:
        raise ConfigError(f"BACKEND must be one of {', '.join(BACKENDS)}, got {setting!r}")
    if setting == "torch":
        return "torch", "BACKEND=torch"
    explicit = setting == "onnxruntime"
    if device.type != "cpu":
        if explicit:
            raise ConfigError(
                f"BACKEND=onnxruntime runs on the CPU only here, not {device}; use DEVICE=cpu, "
                "or BACKEND=torch (or auto) on a GPU"
            )
        return "torch", f"on {device.type}, BACKEND=auto keeps torch"
    if precision not in ORT_PRECISIONS:
        if explicit:
            raise ConfigError(
                f"BACKEND=onnxruntime runs PRECISION=fp32 only, not {precision}; set "
                "PRECISION=fp32, or BACKEND=auto to run other precisions on torch"
            )
        return "torch", f"PRECISION={precision} runs on torch (ONNX Runtime runs fp32 only here)"
    missing = missing_packages()
    if missing:
        if explicit:
            raise ConfigError(
                f"BACKEND=onnxruntime needs {' and '.join(missing)}: pip install 'imgqueue[worker]'"
            )
        return "torch", f"{' and '.join(missing)} not installed"
    return "onnxruntime", f"BACKEND={setting}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "imgqueue" / "onnx"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def identity(spec: ModelSpec, input_size: int) -> dict[str, Any]:
    """Everything that decides the exported graph and its weights."""
    source = spec.weights
    if source.sha256:
        weights = f"sha256:{source.sha256}"
    elif source.path is not None:  # torchvision's own file: its name carries its hash prefix
        weights = f"{source.weights_id}:{source.path.name}"
    else:  # seeded random: the same in any process of the same torch version (below)
        weights = source.weights_id
    return {
        "format": EXPORT_FORMAT,
        "exporter": "torchscript",
        "arch": spec.arch,
        "weights": weights,
        "num_classes": len(spec.labels),
        "input_size": input_size,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
    }


def entry_name(spec: ModelSpec, input_size: int) -> str:
    key = json.dumps(identity(spec, input_size), sort_keys=True)
    return f"{spec.arch}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"


@dataclass(frozen=True)
class Exported:
    path: Path  # the model file
    seconds: float | None  # the export's time; None: found in the cache


def ensure_exported(
    spec: ModelSpec, model: torch.nn.Module, input_size: int, cache_dir: Path
) -> Exported:
    """The cached export of `model` (fp32, on the CPU, in eval mode), made now if missing."""
    entry = cache_dir / entry_name(spec, input_size)
    if (entry / MODEL_FILE).is_file():
        return Exported(entry / MODEL_FILE, None)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(cache_dir / f"{entry.name}.lock"):
            if (entry / MODEL_FILE).is_file():  # another process exported it while we waited
                return Exported(entry / MODEL_FILE, None)
            _sweep(cache_dir, entry.name)
            tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".tmp", dir=cache_dir))
            try:
                started = time.perf_counter()
                export(model, input_size, tmp / MODEL_FILE)
                seconds = time.perf_counter() - started
                meta = {**identity(spec, input_size), "export_seconds": round(seconds, 3)}
                (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
                tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from workers run as other users
                _publish(tmp, entry)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise OnnxUnavailable(
            f"cannot write the export into ONNX_CACHE_DIR {cache_dir}: {exc}",
            "ONNX_CACHE_DIR not writable",
        ) from exc
    return Exported(entry / MODEL_FILE, seconds)


def discard(path: Path) -> None:
    """Remove a cached entry (by its model file) that failed to load or to match: renamed away
    first, so no reader finds it half deleted."""
    entry = path.parent
    trash = entry.with_name(f".{entry.name}.{os.getpid()}.{time.monotonic_ns()}.discarded")
    with contextlib.suppress(OSError):
        os.rename(entry, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _sweep(cache_dir: Path, name: str) -> None:
    """Before an export, under its entry's lock: remove what exporters of this entry that died
    left behind (temporary and discarded directories; a live exporter holds the lock, so only
    one that gave up waiting past LOCK_WAIT_S could lose its work here, and it then stays on
    torch), and other entries no process has loaded for UNUSED_DAYS (each load touches its
    entry), so that a host's cache does not grow with every model it ever served."""
    for stale in cache_dir.glob(f".{name}.*"):
        if stale.is_dir():
            log.info("ONNX cache: removing %s, left by an export that did not finish", stale)
            shutil.rmtree(stale, ignore_errors=True)
    cutoff = time.time() - UNUSED_DAYS * 86400
    for meta in cache_dir.glob(f"*/{META_FILE}"):
        with contextlib.suppress(OSError):
            if meta.stat().st_mtime < cutoff:
                log.info("ONNX cache: removing %s, unused for %d days", meta.parent, UNUSED_DAYS)
                discard(meta.parent / MODEL_FILE)


def touch(path: Path) -> None:
    """Mark a cached entry (by its model file) as used now (best-effort)."""
    with contextlib.suppress(OSError):
        os.utime(path.parent / META_FILE)


def _publish(tmp: Path, entry: Path) -> None:
    try:
        os.rename(tmp, entry)  # atomic: the directory appears with all its files
    except OSError as exc:
        # Someone published the same entry meanwhile (only past LOCK_WAIT_S): keep theirs.
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (entry / MODEL_FILE).is_file():
            raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (flock: released by the kernel if the holder dies)."""
    with path.open("a") as f:
        deadline = time.monotonic() + LOCK_WAIT_S
        waited = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("ONNX export: %s still locked after %.0fs", path, LOCK_WAIT_S)
                    yield  # export anyway, under a temporary name of our own
                    return
                if not waited:
                    log.info("ONNX export: another process is exporting; waiting (%s)", path)
                    waited = True
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def export(model: torch.nn.Module, input_size: int, path: Path) -> None:
    """`model` (fp32, CPU) to an ONNX file at `path`, batch size dynamic. Raises OnnxUnavailable
    naming the architecture's problem (an operator the exporter lacks, a graph over 2 GiB)."""
    example = torch.zeros(1, 3, input_size, input_size)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # Attention's fused fast path (aten::_native_multi_head_attention, taken in eval mode)
        # has no ONNX form; the plain path computes the same and exports (vit_*).
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns that it is deprecated, and tracing warns about
            # Python control flow that a fixed input shape makes harmless: neither is news
            # to an operator, and pytest would turn them into errors.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.eval(),
                (example,),
                str(path),
                dynamo=False,  # torch.export's exporter needs onnxscript and took 3.3x longer
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:
        raise OnnxUnavailable(f"export failed: {_short(exc)}", "export failed") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


class OrtSession:
    """An ONNX Runtime CPU session over an exported model: a batch in, logits out."""

    def __init__(self, path: Path, threads: int, spinning: str = DEFAULT_SPINNING) -> None:
        import onnxruntime as ort

        allow_spinning, force_stop = SPINNING[spinning]
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: it warns about unused initializers
        options.add_session_config_entry("session.intra_op.allow_spinning", allow_spinning)
        options.add_session_config_entry("session.force_spinning_stop", force_stop)
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise OnnxUnavailable(
                f"ONNX Runtime cannot load {path}: {_short(exc)}", "the export does not load"
            ) from exc
        self.input = self.session.get_inputs()[0].name
        self.path = path
        self.threads = options.intra_op_num_threads
        self.spinning = spinning

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {self.input: x})
        return torch.from_numpy(out)


class OrtModule(torch.nn.Module):
    """A session as a module (logits out), for code that times or calls models alike."""

    def __init__(self, session: OrtSession) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.session.logits(x)


def probe_batch(preprocess: Callable[[Image.Image], torch.Tensor], size: int) -> torch.Tensor:
    """Two sample photos as the transforms make them (noise where no samples are shipped)."""
    from worker.model.quantized import calibration_images

    images = calibration_images(limit=2)
    if not images:
        return torch.randn(2, 3, size, size)
    return torch.stack([preprocess(image) for image in images])


@dataclass(frozen=True)
class Difference:
    """How far the session is from the torch model on the probe batch."""

    probability: float  # the largest difference in any probability
    logits: float  # the largest difference in any logit, over the largest logit's magnitude

    @property
    def within(self) -> bool:
        return self.probability <= PROBE_TOLERANCE and self.logits <= LOGIT_TOLERANCE

    def __str__(self) -> str:
        return f"{self.probability:.1e} in probabilities, {self.logits:.1e} in logits (relative)"


def probe_difference(
    session: OrtSession, model: torch.nn.Module, probe: torch.Tensor
) -> Difference:
    """The session against the torch model on `probe`. The logits are compared too: a random
    or untrained head can give every image near-uniform probabilities, which would hide a
    wrong graph from the probabilities alone."""
    with torch.inference_mode():
        expected = model(probe).float()
    got = session.logits(probe)
    if got.shape != expected.shape:
        shapes = f"the session gave {tuple(got.shape)}, torch {tuple(expected.shape)}"
        raise OnnxUnavailable(shapes, "the export gives other shapes")
    dp = (torch.softmax(got, dim=1) - torch.softmax(expected, dim=1)).abs().max()
    scale = expected.abs().max().clamp(min=1e-6)
    return Difference(float(dp), float((got - expected).abs().max() / scale))


def load_session(
    spec: ModelSpec, model: torch.nn.Module, probe: torch.Tensor, options: OnnxOptions
) -> tuple[OrtSession, Exported]:
    """A checked session for `model` (fp32, CPU, eval): from the cache, else exported now. A
    cached entry that fails to load or to match is exported again, once."""
    input_size = int(probe.shape[-1])
    cache_dir = options.cache_dir or default_cache_dir()
    threads = options.threads or torch.get_num_threads()
    for attempt in (1, 2):
        exported = ensure_exported(spec, model, input_size, cache_dir)
        try:
            session = OrtSession(exported.path, threads, options.spinning)
            worst = probe_difference(session, model, probe)
        except OnnxUnavailable:
            if exported.seconds is not None or attempt == 2:
                raise
            log.warning("ONNX cache: %s does not load; exporting it again", exported.path)
            discard(exported.path)
            continue
        if worst.within:
            touch(exported.path)
            return session, exported
        if exported.seconds is None and attempt == 1:
            log.warning(
                "ONNX cache: %s differs from the model by %s; exporting it again",
                exported.path,
                worst,
            )
            discard(exported.path)
            continue
        raise OnnxUnavailable(
            f"ONNX Runtime differs from torch by {worst} on the probe images; fp32 allows "
            f"{PROBE_TOLERANCE:.0e} and {LOGIT_TOLERANCE:.0e}",
            f"differs from torch by {worst.probability:.0e}",
        )
    raise AssertionError("unreachable")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
