"""`python -m bench.onnx_threads`: ONNX Runtime's threads and spinning, measured as the worker runs.

Two parts, each interleaved over --rounds so a drift of this shared VM hits every setting alike:

* model only, in this process: torch fp32 (channels_last, what BACKEND=torch runs) against
  ONNX Runtime sessions with 1 or 2 intra-op threads and each ONNX_SPINNING, batches 1, 4, 8;
* the service: one real worker per setting on a private Redis, 1024x768 JPEGs, throughput of a
  burst and a lone job's latency after the worker idled 1 s (bench.service.Cluster), the
  decode processes and task threads sharing the cores with the session as in production.

Random weights (random:0): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from bench.images import SAMPLES, make_set
from bench.service import Cluster
from tests.support import ROOT
from worker.model import onnx
from worker.model.classifier import Classifier
from worker.model.spec import resolve_model

BATCHES = (1, 4, 8)
IDLE_S = 0.5


def model_only(arch: str, rounds: int, repeats: int) -> None:
    spec = resolve_model(arch=arch, weights="random:0")
    torch_model = Classifier(spec, "cpu", "fp32", backend="torch")
    ort_model = Classifier(spec, "cpu", "fp32", backend="onnxruntime")
    assert ort_model.session is not None
    path = ort_model.session.path
    size = torch_model.input_size
    runners: dict[str, Callable[[torch.Tensor], object]] = {"torch fp32": torch_model.infer}
    for threads in (2, 1):
        for spinning in onnx.SPINNING:
            session = onnx.OrtSession(path, threads, spinning)
            runners[f"onnxruntime {threads} thr, spinning {spinning}"] = session.logits
    best: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in range(rounds):
        for name, run in runners.items():
            for b in BATCHES:
                x = torch.randn(b, 3, size, size)
                # The runtime timed before may still spin (OpenMP's or the session's own
                # threads): let it stop, or it takes the cores from this one.
                time.sleep(IDLE_S)
                run(x)  # warm-up: kernels for this shape
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    run(x)
                    times.append(time.perf_counter() - started)
                best[(name, b)].append(b / min(times))
        print(f"  model-only round {r + 1}/{rounds} done")
    print(f"\nmodel only, {arch}, img/s (best of {repeats} per round; range over {rounds} rounds)")
    print("| runtime | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for name in runners:
        cells = [_span(best[(name, b)]) for b in BATCHES]
        print(f"| {name} | " + " | ".join(cells) + " |")


def service(images: int, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="imgqueue-ortthreads-"))
    root = work / "images"
    (root / "samples").mkdir(parents=True)
    for sample in SAMPLES.glob("*.jpg"):
        shutil.copy(sample, root / "samples" / sample.name)
    files = make_set(root, "1024x768", images)
    settings: dict[str, dict[str, str]] = {"torch": {"BACKEND": "torch"}}
    for threads in ("2", "1"):
        for spinning in onnx.SPINNING:
            settings[f"onnxruntime {threads} thr, spinning {spinning}"] = {
                "BACKEND": "onnxruntime",
                "ONNX_SPINNING": spinning,
                "OMP_NUM_THREADS": threads,
            }
    throughput: dict[str, list[float]] = defaultdict(list)
    idle: dict[str, list[float]] = defaultdict(list)
    cluster = Cluster(work, root)
    try:
        for r in range(rounds):
            for name, env in settings.items():
                with cluster.workers(1, ROOT, PRECISION="fp32", **env):
                    cluster.burst(files[:16])  # warm-up
                    throughput[name].append(cluster.burst(files).throughput)
                    lone = cluster.idle_latency("samples/cat.jpg", 5)
                    idle[name].append(lone.percentile(50) * 1e3)
            print(f"  service round {r + 1}/{rounds} done")
    finally:
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nservice, 1 worker, {images} JPEGs 1024x768, fp32; range over {rounds} rounds")
    print("| setting | img/s | idle latency p50, ms (451x300) |")
    print("|---|---|---|")
    for name in settings:
        print(f"| {name} | {_span(throughput[name])} | {_span(idle[name])} |")


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    if len(values) == 1:
        return f"{lo:.1f}"
    return f"{lo:.1f}-{hi:.1f} (median {statistics.median(values):.1f})"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.onnx_threads", description=__doc__)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--images", type=int, default=96, help="JPEGs per service burst")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="model-only timings per round")
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--skip-model", action="store_true")
    args = p.parse_args()
    started = time.perf_counter()
    print(f"torch threads {torch.get_num_threads()}; CPU: {_cpu()}")
    if not args.skip_model:
        model_only(args.arch, args.rounds, args.repeats)
    if not args.skip_service:
        service(args.images, args.rounds)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
