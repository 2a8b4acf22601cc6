"""torchvision's classification architectures: build one, and check a state dict against it.

The check runs on the `meta` device: parameter shapes without memory or time, so a worker's
main process can refuse a bad checkpoint before it forks or takes a job.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import torch

from worker.errors import ConfigError

# Ignored when missing: BatchNorm counts its own batches, and PyTorch fills a missing counter in.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


@cache
def architectures() -> tuple[str, ...]:
    """Every classification architecture torchvision has (not detection or segmentation)."""
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str, setting: str = "MODEL") -> str:
    if arch not in architectures():
        close = difflib.get_close_matches(arch, architectures(), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(
            f"{setting}={arch!r} is not a torchvision classification architecture{hint} "
            "(python -c 'import torchvision; print(torchvision.models.list_models("
            "module=torchvision.models))' lists them)"
        )
    return arch


def builder(arch: str) -> Callable[..., torch.nn.Module]:
    import torchvision.models

    made: Callable[..., torch.nn.Module] = torchvision.models.get_model_builder(check_arch(arch))
    return made


def weights_enum(arch: str) -> Any:
    """The architecture's torchvision weights enum (`ResNet50_Weights` for resnet50)."""
    import torchvision.models

    return torchvision.models.get_model_weights(check_arch(arch))


def enum_member(arch: str, name: str, setting: str = "MODEL_WEIGHTS") -> Any:
    enum = weights_enum(arch)
    try:
        return enum[name.upper()]
    except KeyError:
        names = ", ".join(m.name for m in enum)
        raise ConfigError(
            f"{setting}={name!r}: {arch} has no such weights; it has {names}"
        ) from None


def default_member(arch: str) -> Any:
    return weights_enum(arch).DEFAULT


def enum_names(arch: str) -> tuple[str, ...]:
    return tuple(m.name for m in weights_enum(arch))


def build(arch: str, num_classes: int, device: str | torch.device = "cpu") -> torch.nn.Module:
    """An untrained model with a head of `num_classes` outputs."""
    make = builder(arch)
    with torch.device(device):
        if arch.startswith(("inception", "googlenet")):
            # Their aux heads train only; a checkpoint for serving need not carry them.
            return make(weights=None, num_classes=num_classes, aux_logits=False, init_weights=False)
        return make(weights=None, num_classes=num_classes)


@cache
def _shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    try:
        model = build(arch, num_classes, "meta")
    except NotImplementedError:  # RegNets compute their widths with tensors: build for real
        with torch.random.fork_rng(devices=[]):
            model = build(arch, num_classes, "cpu")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@cache
def head_keys(arch: str) -> tuple[str, ...]:
    """The tensors whose shape follows the number of classes (`fc.weight`, `fc.bias`)."""
    a, b = _shapes(arch, 1000), _shapes(arch, 7)
    return tuple(k for k in a if a[k] != b[k])


def head_size(arch: str, state: Mapping[str, Any]) -> int | None:
    """How many outputs the checkpoint's head has, or None if it has no head tensor."""
    for key in head_keys(arch):
        if key.endswith("weight") and key in state:
            return int(state[key].shape[0])
    return None


def check_state_dict(
    arch: str, state: Mapping[str, Any], num_classes: int, labels: str, where: str
) -> None:
    """Refuse, naming `where` and what differs, a state dict that would not load exactly.
    `labels` says where the `num_classes` labels come from ("MODEL_LABELS x has 3 labels")."""
    heads = head_keys(arch)
    outputs = head_size(arch, state)
    if outputs is not None and outputs != num_classes:
        head = next(k for k in heads if k.endswith("weight"))
        raise ConfigError(
            f"{where}: the checkpoint's head ({head}) has {outputs} outputs; {labels}"
        )
    expected = _shapes(arch, num_classes)
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} is {tuple(state[k].shape)}, {arch} needs {expected[k]}"
        for k in expected
        if k in state and tuple(getattr(state[k], "shape", ())) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape ({_few(wrong)})")
    if problems:
        hint = ""
        if unexpected and len(missing) == len(expected):
            hint = "; is it a checkpoint of another architecture, or are its keys prefixed?"
        raise ConfigError(f"{where} does not fit {arch}: {'; '.join(problems)}{hint}")


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
