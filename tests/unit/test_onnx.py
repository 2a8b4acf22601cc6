"""The ONNX Runtime backend in-process: the choice, the export and its cache, parity, loud
fallbacks. Exports use mobilenet_v3_small (random:0), about a second each
(tests/system/test_onnx.py: processes exporting at once, and a real worker)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import torch

from tests.support.fidelity import compare, reference, worker_way
from tests.support.paths import ROOT, SAMPLES
from worker.errors import ConfigError
from worker.metrics import Metrics
from worker.model import onnx
from worker.model.classifier import Classifier
from worker.model.spec import ModelSpec, resolve_model
from worker.settings import Settings

ARCH = "mobilenet_v3_small"


SAMPLE_PATHS = sorted(SAMPLES.glob("*.jpg"))


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return resolve_model(arch=ARCH, weights="random:0")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def exported(spec: ModelSpec, cache_dir: Path) -> Classifier:
    """The first load: exported into an empty cache."""
    return Classifier(spec, "cpu", "fp32", backend="onnxruntime", onnx_options=_options(cache_dir))


def _options(cache_dir: Path) -> onnx.OnnxOptions:
    return onnx.OnnxOptions(cache_dir=cache_dir)


# -- the choice -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"BACKEND": "onnx"}, "BACKEND must be one of auto, torch, onnxruntime"),
        ({"BACKEND": "onnxruntime", "PRECISION": "int8"}, "runs PRECISION=fp32 only"),
        ({"BACKEND": "onnxruntime", "DEVICE": "cuda"}, "CPU only"),
        ({"ONNX_SPINNING": "sometimes"}, "ONNX_SPINNING must be one of pass, on, off"),
        ({"ONNX_CACHE_DIR": str(SAMPLES / "cat.jpg")}, "is not a directory"),
    ],
)
def test_settings_refuse_what_cannot_run(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_settings_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.backend, settings.onnx_spinning, settings.onnx_cache_dir) == (
        "auto",
        "pass",
        None,
    )
    assert settings.onnx_options.cache_dir is None  # the default, resolved where it is used
    assert onnx.default_cache_dir().parts[-2:] == ("imgqueue", "onnx")


def test_auto_picks_onnxruntime_on_a_cpu_at_fp32_only(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert onnx.pick_backend("auto", cpu, "fp32")[0] == "onnxruntime"
    assert onnx.pick_backend("torch", cpu, "fp32")[0] == "torch"
    backend, why = onnx.pick_backend("auto", gpu, "fp16")
    assert backend == "torch" and "keeps torch" in why
    for precision in ("bf16", "int8", "fp16"):
        backend, why = onnx.pick_backend("auto", cpu, precision)
        assert backend == "torch" and "fp32 only" in why
    with pytest.raises(ConfigError, match="fp32 only"):
        onnx.pick_backend("onnxruntime", cpu, "bf16")
    with pytest.raises(ConfigError, match="CPU only"):
        onnx.pick_backend("onnxruntime", gpu, "fp32")
    monkeypatch.setattr(onnx, "missing_packages", lambda: ["onnxruntime"])
    assert onnx.pick_backend("auto", cpu, "fp32") == ("torch", "onnxruntime not installed")
    with pytest.raises(ConfigError, match=r"pip install 'imgqueue\[worker\]'"):
        onnx.pick_backend("onnxruntime", cpu, "fp32")


def test_producer_install_stays_free_of_onnx() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if "onnx" in d]
    worker_extra = " ".join(project["optional-dependencies"]["worker"])
    assert "onnxruntime" in worker_extra and "onnx>=" in worker_extra


# -- export, cache, parity --------------------------------------------------------------------


def test_fp32_on_onnxruntime_matches_the_seed_tutorial(
    exported: Classifier, spec: ModelSpec
) -> None:
    assert exported.backend == "onnxruntime" and exported.session is not None
    assert exported.export_seconds is not None and exported.export_seconds > 0
    info = exported.describe()
    assert (info["backend"], info["precision"], info["device"]) == ("onnxruntime", "fp32", "cpu")
    assert "backend_fallback" not in info
    got = compare(reference(spec, SAMPLE_PATHS), worker_way(exported, SAMPLE_PATHS, draft=False))
    assert got["max_dp"] < 1e-5, got
    assert got["top5_order"] == 1.0


def test_later_loads_reuse_the_export(
    exported: Classifier, spec: ModelSpec, cache_dir: Path
) -> None:
    meta_file = cache_dir / onnx.entry_name(spec, 224) / onnx.META_FILE
    os.utime(meta_file, (0, 0))
    again = Classifier(spec, "cpu", "fp32", backend="auto", onnx_options=_options(cache_dir))
    assert again.backend == "onnxruntime" and again.export_seconds is None
    assert meta_file.stat().st_mtime > time.time() - 3600  # marked as used
    assert again.model is None  # the torch copy is let go once the session is checked
    x = torch.randn(3, 3, 224, 224)
    assert torch.equal(again.infer(x), exported.infer(x))
    entries = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert [p.name for p in entries] == [onnx.entry_name(spec, 224)]
    meta = json.loads((entries[0] / "export.json").read_text())
    assert meta["arch"] == ARCH and meta["weights"] == "random:0" and meta["opset"] == onnx.OPSET


def test_the_cache_key_follows_the_weights_identity(spec: ModelSpec) -> None:
    other_seed = resolve_model(arch=ARCH, weights="random:1")
    labels = ModelSpec(**{**spec.__dict__, "labels": ("a", "b", "c")})
    names = {onnx.entry_name(s, 224) for s in (spec, other_seed, labels)}
    names.add(onnx.entry_name(spec, 256))
    assert len(names) == 4
    assert onnx.entry_name(spec, 224) == onnx.entry_name(
        resolve_model(arch=ARCH, weights="random:0"), 224
    )


def test_a_damaged_cache_entry_is_exported_again(
    exported: Classifier, spec: ModelSpec, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_file = cache_dir / onnx.entry_name(spec, 224) / onnx.MODEL_FILE
    model_file.write_bytes(b"not a model")
    with caplog.at_level(logging.INFO, logger="worker.model"):
        fresh = Classifier(
            spec, "cpu", "fp32", backend="onnxruntime", onnx_options=_options(cache_dir)
        )
    assert fresh.backend == "onnxruntime" and fresh.export_seconds is not None
    assert "does not load; exporting it again" in caplog.text
    assert f"onnxruntime: exported {ARCH} in" in caplog.text  # the export's time, logged
    x = torch.randn(2, 3, 224, 224)
    assert torch.allclose(fresh.infer(x), exported.infer(x), atol=1e-6)


# -- loud fallbacks ---------------------------------------------------------------------------


def _fail_export(*args: object) -> None:
    raise onnx.OnnxUnavailable("export failed: aten::frobnicate is not supported", "export failed")


def test_a_failed_export_falls_back_to_torch_loudly(
    spec: ModelSpec,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(onnx, "export", _fail_export)
    with caplog.at_level(logging.WARNING, logger="worker.model.classifier"):
        model = Classifier(spec, "cpu", "fp32", backend="auto", onnx_options=_options(tmp_path))
    assert model.backend == "torch" and model.session is None and model.model is not None
    info = model.describe()
    assert info["backend"] == "torch"
    assert info["backend_fallback"] == "onnxruntime: export failed; torch ran instead"
    assert "FALLING BACK TO TORCH" in caplog.text and "aten::frobnicate" in caplog.text
    metrics = Metrics()
    metrics.set_model(info)
    value = metrics.registry.get_sample_value(
        "imgqueue_model_backend", {"backend": "torch", "fallback": "true"}
    )
    assert value == 1
    assert model.infer(torch.randn(1, 3, 224, 224)).shape == (1, len(spec.labels))


def test_an_unwritable_cache_falls_back_to_torch(spec: ModelSpec, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    options = _options(tmp_path / "a-file" / "onnx")
    model = Classifier(spec, "cpu", "fp32", backend="auto", onnx_options=options)
    assert model.backend == "torch"
    assert model.describe()["backend_fallback"] == (
        "onnxruntime: ONNX_CACHE_DIR not writable; torch ran instead"
    )


def test_a_session_that_differs_from_torch_is_refused(
    spec: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx, "PROBE_TOLERANCE", -1.0)  # nothing matches: the check must say so
    model = Classifier(spec, "cpu", "fp32", backend="onnxruntime", onnx_options=_options(tmp_path))
    assert model.backend == "torch"
    assert "differs from torch" in model.describe()["backend_fallback"]


def test_the_check_looks_at_logits_too() -> None:
    # A random or untrained head can make every probability near-uniform: the logits still tell.
    assert onnx.Difference(0.0, 0.0).within
    assert not onnx.Difference(0.0, 0.01).within
    assert not onnx.Difference(2e-5, 0.0).within


def test_bf16_cpus_time_onnxruntime_fp32_against_torch_bf16(
    spec: ModelSpec, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.model.classifier as classifier

    monkeypatch.setattr(classifier, "cpu_has_native_bf16", lambda: True)
    timed: list[str] = []

    def pays(verdict: bool) -> object:
        def bf16_pays(fp32: torch.nn.Module, bf16: torch.nn.Module, size: int) -> bool:
            timed.append(type(fp32).__name__)
            return verdict

        return bf16_pays

    monkeypatch.setattr(classifier, "bf16_pays", pays(False))
    model = Classifier(spec, "cpu", "auto", backend="auto", onnx_options=_options(cache_dir))
    assert (model.precision, model.backend) == ("fp32", "onnxruntime")
    monkeypatch.setattr(classifier, "bf16_pays", pays(True))
    model = Classifier(spec, "cpu", "auto", backend="auto", onnx_options=_options(cache_dir))
    assert (model.precision, model.backend, model.session) == ("bf16", "torch", None)
    assert timed == ["OrtModule", "OrtModule"]  # the guard timed ONNX Runtime's fp32, not torch's
