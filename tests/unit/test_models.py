"""Your own models without a worker, in this process: checkpoints (made by
tests/support/models.py), labels files, packed, checked and refused saying what differs
(tests/system/test_models.py: served by workers, and read by another uid).

The checkpoints are seeded random weights with real heads (3 and 4 classes): what a fine-tuned
model's file looks like, without downloading one."""

from __future__ import annotations

import contextlib
import json
import stat
from pathlib import Path

import pytest
import torch
import torchvision

from tests.support.models import (
    DEFECTS,
    TINY,
    checkpoint,
    labels_file,
    made_fixture,  # noqa: F401  (the fixture `made`)
    pack_under_umask_077,
)
from worker.errors import ConfigError, WeightsUnavailable
from worker.model.card import read_card
from worker.model.labels import labels_id, read_labels
from worker.model.pack import check, pack, read_checkpoint
from worker.model.spec import resolve_model

# -- labels, cards and refusals, without Redis ------------------------------------------------


def test_labels_files_in_each_form(tmp_path: Path) -> None:
    lines = labels_file(tmp_path / "a.txt", DEFECTS)
    listed = tmp_path / "b.json"
    listed.write_text(json.dumps(DEFECTS))
    mapped = tmp_path / "index_to_name.json"
    mapped.write_text(json.dumps({"2": ["n3", "dent"], "0": "ok", "1": "scratch"}))
    assert read_labels(lines) == read_labels(listed) == read_labels(mapped) == DEFECTS
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"0": "ok", "2": "dent"}))
    with pytest.raises(ConfigError, match="missing \\[1\\]"):
        read_labels(gap)
    assert labels_id(DEFECTS) != labels_id(list(reversed(DEFECTS)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": "eleven"}, "head \\(fc.weight\\) has 3 outputs; MODEL_LABELS .* has 11 labels"),
        ({"labels": None}, "has 3 outputs; MODEL_LABELS is unset, so the 1000 categories of"),
        ({"arch": "resnet18"}, "does not fit resnet18: .*unexpected keys"),
        ({"arch": "resnet5O"}, "not a torchvision classification architecture; did you mean"),
        ({"precision": "int8", "arch": "squeezenet1_1"}, "int8 .* not squeezenet1_1"),
    ],
)
def test_a_model_that_would_not_load_is_refused_saying_what_differs(
    made: Path, tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "arch": "resnet50",
        "weights": str(made / "defects.pt"),
        "labels": made / "defects.txt",
    }
    if kwargs.get("labels") == "eleven":
        kwargs = {"labels": labels_file(tmp_path / "eleven.txt", [f"c{i}" for i in range(11)])}
    if kwargs.get("arch") == "squeezenet1_1":
        args.update(weights=str(made / "tiny-v1.pt"), labels=made / "tiny.txt")
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        resolve_model(**args)  # type: ignore[arg-type]


def test_missing_keys_are_named(made: Path, tmp_path: Path) -> None:
    state = torch.load(made / "defects.pt", weights_only=True)
    del state["layer4.2.bn3.weight"], state["layer4.2.bn3.num_batches_tracked"]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(ConfigError, match=r"1 missing keys \(layer4\.2\.bn3\.weight\)"):
        resolve_model(weights=str(tmp_path / "cut.pt"), labels=made / "defects.txt")


def test_pack_reads_each_kind_of_checkpoint_and_writes_a_card_that_checks(
    made: Path, tmp_path: Path
) -> None:
    state = torch.load(made / "tiny-v1.pt", weights_only=True)
    lightning = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 7}, lightning)
    whole = tmp_path / "whole.pt"
    model = torchvision.models.squeezenet1_1(num_classes=4)
    model.load_state_dict(state)
    torch.save(model, whole)
    kinds = {}
    for path in (made / "tiny-v1.pt", lightning, whole):
        with (
            pytest.raises(WeightsUnavailable, match="--trust-pickle")
            if path == whole
            else contextlib.nullcontext()
        ):
            read_checkpoint(path)
        out = tmp_path / f"out-{path.stem}"
        packed = pack(
            path,
            arch="squeezenet1_1",
            labels=made / "tiny.txt",
            out=out,
            name="tiny",
            trust_pickle=path == whole,
        )
        kinds[path.name] = packed.found
        card = read_card(out)
        assert (card.name, card.version, card.arch) == ("tiny", "1", "squeezenet1_1")
        assert packed.spec.labels == tuple(TINY)
    assert kinds == {
        "tiny-v1.pt": "a state dict",
        "last.ckpt": "a Lightning-style checkpoint (its state_dict)",
        "whole.pt": "a whole pickled model",
    }
    # The same tensors however they were wrapped: one weights identity.
    ids = {check(tmp_path / f"out-{p}").weights.weights_id for p in ("tiny-v1", "last", "whole")}
    assert len(ids) == 1


def test_a_card_is_checked_against_its_files(made: Path, tmp_path: Path) -> None:
    out = tmp_path / "defects"
    pack(made / "defects.pt", arch="resnet50", labels=made / "defects.txt", out=out, name="d")
    spec = check(out)
    assert (spec.name, spec.model, spec.version, spec.labels) == ("d", "d", "1", tuple(DEFECTS))
    card = json.loads((out / "model.json").read_text())
    (out / "weights.pt").write_bytes((out / "weights.pt").read_bytes() + b"\0")
    with pytest.raises(ConfigError, match=r"weights\.pt has sha256 .* the card says"):
        resolve_model(card=out)
    card["arch"] = "vit_b_16"
    (out / "model.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match=r"MODEL_CARD .* names MODEL='vit_b_16', but MODEL="):
        resolve_model(card=out, arch="resnet50x")


def test_pack_writes_files_0644_and_directories_0755_whatever_the_umask(
    made: Path, tmp_path: Path
) -> None:
    """The compose worker runs as uid 10001 and mounts ./models read-only: mkstemp alone made
    pack's files 0600, which it could not read."""
    out = tmp_path / "models" / "tiny"
    pack_under_umask_077(made, out)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out.parent, out, *out.rglob("*")]}
    files = dict.fromkeys(("model.json", "weights.pt", "labels.json"), 0o644)
    assert modes == {"models": 0o755, "tiny": 0o755, **files}


def test_the_cli_packs_and_checks_without_redis(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    out = tmp_path / "tiny"
    args = ["--arch", "squeezenet1_1", "--labels", str(made / "tiny.txt"), "--name", "tiny"]
    assert main(["model", "pack", str(made / "tiny-v1.pt"), *args, "--out", str(out)]) == 0
    assert "found a state dict" in capsys.readouterr().err
    assert main(["model", "check", str(out)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["queue"], shown["classes"], shown["version"]) == ("model.tiny", 4, "1")
    assert main(["model", "check", str(out), "--precision", "int8"]) == 2
    assert "int8 quantization here covers resnet50 only" in capsys.readouterr().err


def test_another_architecture_matches_the_seed_tutorials_way_within_1e_5(made: Path) -> None:
    """SqueezeNet with its torchvision weights' own transforms and categories, in fp32, against
    `squeezenet1_1()` with `weights.transforms()` one image at a time."""
    from tests.support.fidelity import compare, reference, worker_way
    from tests.support.paths import SAMPLES
    from worker.model.classifier import Classifier

    weights = checkpoint(made / "squeezenet-imagenet.pt", "squeezenet1_1", 1000)
    spec = resolve_model(arch="squeezenet1_1", weights=str(weights))
    assert (spec.preprocess_id, len(spec.labels)) == ("IMAGENET1K_V1", 1000)
    paths = sorted(SAMPLES.glob("*.jpg"))
    ref = reference(spec, paths)
    assert float((ref - ref[0]).abs().max()) > 0.05, "the images must get different answers"
    c = compare(ref, worker_way(Classifier(spec, "cpu", "fp32"), paths, draft=False))
    assert c["max_dp"] < 1e-5 and c["top5_order"] == 1.0, c
