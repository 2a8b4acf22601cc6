"""bf16 and int8 in-process give valid results close to fp32; auto precision picks one."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image

from tests.support.paths import SAMPLES
from worker.model.bf16 import cpu_has_native_bf16
from worker.model.classifier import Classifier, pick_precision
from worker.model.spec import resolve_model


@pytest.fixture(scope="module")
def samples_batch() -> torch.Tensor:
    model = Classifier(resolve_model(weights="random:0"), "cpu", "fp32")
    images = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    return torch.stack([model.preprocess(i) for i in images])


@pytest.fixture(scope="module")
def fp32_output(samples_batch: torch.Tensor) -> torch.Tensor:
    return Classifier(resolve_model(weights="random:0"), "cpu", "fp32").infer(samples_batch)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_lower_precision_is_valid_and_close_to_fp32(
    precision: str, samples_batch: torch.Tensor, fp32_output: torch.Tensor
) -> None:
    model = Classifier(resolve_model(weights="random:0"), "cpu", precision)
    out = model.infer(samples_batch)
    assert model.precision == precision
    assert out.dtype == torch.float32 and out.shape == fp32_output.shape
    assert torch.allclose(out.sum(dim=1), torch.ones(len(out)), atol=1e-3)
    assert bool((out >= 0).all())
    for got, ref in zip(out, fp32_output, strict=True):
        shared = set(got.topk(5).indices.tolist()) & set(ref.topk(5).indices.tolist())
        assert len(shared) >= 3, f"{precision}: top-5 drifted from fp32"
    assert model.describe()["precision"] == precision


def test_int8_weights_id_says_quantized() -> None:
    model = Classifier(resolve_model(weights="random:7"), "cpu", "int8")
    assert model.weights_id == "random:7:int8-ptq"
    assert model.describe()["weights"] == "random:7:int8-ptq"


def test_quantizable_model_has_the_same_seeded_weights() -> None:
    from worker.model.classifier import build_network
    from worker.model.quantized import _float_quantizable

    spec = resolve_model(weights="random:3")
    plain = build_network(spec).state_dict()
    quantizable = _float_quantizable(spec.weights, 1000).state_dict()
    assert plain.keys() == quantizable.keys()
    assert all(torch.equal(plain[k], quantizable[k]) for k in plain)


def test_auto_precision() -> None:
    assert pick_precision("auto", torch.device("cuda", 0)) == "fp16"
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert pick_precision("auto", torch.device("cpu")) == expected
    assert pick_precision("int8", torch.device("cpu")) == "int8"


def test_native_bf16_flags() -> None:
    assert cpu_has_native_bf16("flags : fpu avx2 avx512f avx512_bf16 avx512_vnni")
    assert cpu_has_native_bf16("flags : fpu avx2 amx_bf16 amx_tile")
    assert not cpu_has_native_bf16("flags : fpu avx2 avx512f avx512_vnni")
    assert not cpu_has_native_bf16("flags : fpu avx2 avx512f not_avx512_bf16x")


def test_cpu_bf16_runs_in_bf16_weights_and_auto_settles_on_one_precision() -> None:
    explicit = Classifier(resolve_model(weights="random:0"), "cpu", "bf16")
    assert next(explicit.model.parameters()).dtype == torch.bfloat16
    # auto: bf16 only where the CPU has it natively *and* it timed faster at load.
    auto = Classifier(resolve_model(weights="random:0"), "cpu", "auto")
    assert auto.precision in ("bf16", "fp32")
    if not cpu_has_native_bf16():
        assert auto.precision == "fp32"
    expected = torch.bfloat16 if auto.precision == "bf16" else torch.float32
    assert next(auto.model.parameters()).dtype == expected
    assert auto.describe()["precision"] == auto.precision


class _Sleeps(torch.nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def test_auto_keeps_fp32_where_bf16_is_not_faster() -> None:
    from worker.model.bf16 import bf16_pays

    assert bf16_pays(_Sleeps(0.02), _Sleeps(0.005), input_size=8)
    assert not bf16_pays(_Sleeps(0.005), _Sleeps(0.02), input_size=8)
    assert not bf16_pays(_Sleeps(0.01), _Sleeps(0.01), input_size=8)  # under the 1.1x margin
