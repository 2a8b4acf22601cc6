"""`python -m bench.onnx_threads`: ONNX Runtime's threads and spinning, measured as the worker runs.

Two parts, each interleaved over --rounds so a drift of this shared VM hits every setting alike:

* model only, in this process: torch fp32 (channels_last, what BACKEND=torch runs) against
  ONNX Runtime sessions with 1 or 2 intra-op threads and each ONNX_SPINNING, batches 1, 4, 8;
* the service: one real worker per setting on a private Redis, all started at once and idle
  but for the one a burst goes to (see `service`), 1024x768 JPEGs, throughput of a burst and a
  lone job's latency after the worker idled 1 s (bench.service.Cluster), the decode processes
  and task threads sharing the cores with the session as in production.

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
from bench.machine import cpu_name
from bench.quiet import wait_quiet
from bench.service import Cluster
from tests.support.workers import WorkerProcess
from worker.model import onnx
from worker.model.classifier import Classifier
from worker.model.spec import resolve_model

BATCHES = (1, 4, 8)
# (intra-op threads, ONNX_SPINNING): both cores with each way of waiting, and one core
SETTINGS = ((2, "pass"), (2, "on"), (2, "off"), (1, "pass"))
IDLE_S = 0.5
WAITED: list[float] = []  # seconds spent waiting for other work on the machine to pass


def model_only(
    arch: str, rounds: int, repeats: int, quiet: float, settings: list[tuple[int, str]]
) -> None:
    spec = resolve_model(arch=arch, weights="random:0")
    torch_model = Classifier(spec, "cpu", "fp32", backend="torch")
    ort_model = Classifier(spec, "cpu", "fp32", backend="onnxruntime")
    assert ort_model.session is not None
    path = ort_model.session.path
    size = torch_model.input_size
    runners: dict[str, Callable[[torch.Tensor], object]] = {"torch fp32": torch_model.infer}
    for threads, spinning in settings:
        session = onnx.OrtSession(path, threads, spinning)
        runners[f"onnxruntime {threads} thr, spinning {spinning}"] = session.logits
    best: dict[tuple[str, int], list[float]] = defaultdict(list)
    for r in range(rounds):
        for name, run in runners.items():
            for b in BATCHES:
                x = torch.randn(b, 3, size, size)
                # The runtime timed before may still spin (OpenMP's or the session's own
                # threads): let it stop, or it takes the cores from this one; and let other
                # work on this machine pass (bench/quiet.py).
                time.sleep(IDLE_S)
                WAITED.append(wait_quiet(quiet))
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


def service(
    images: int, rounds: int, idle_jobs: int, quiet: float, ort: list[tuple[int, str]]
) -> None:
    """Every setting's worker runs at once, each under its own served name (MODEL_NAME, so its
    own queue); the bursts go to one at a time, the others idle, in an order that rotates each
    round. Restarting workers between settings took minutes, over which this VM's speed drifted
    by up to 2-3x; alternating bursts of a few seconds keeps the comparison fair."""
    work = Path(tempfile.mkdtemp(prefix="imgqueue-ortthreads-"))
    root = work / "images"
    (root / "samples").mkdir(parents=True)
    for sample in SAMPLES.glob("*.jpg"):
        shutil.copy(sample, root / "samples" / sample.name)
    files = make_set(root, "1024x768", images)
    settings: dict[str, dict[str, str]] = {"torch": {"BACKEND": "torch"}}
    for threads, spinning in ort:
        settings[f"onnxruntime {threads} thr, spinning {spinning}"] = {
            "BACKEND": "onnxruntime",
            "ONNX_SPINNING": spinning,
            "OMP_NUM_THREADS": str(threads),
        }
    served = {label: f"threads-{i}" for i, label in enumerate(settings)}
    throughput: dict[str, list[float]] = defaultdict(list)
    ratio: dict[str, list[float]] = defaultdict(list)
    idle: dict[str, list[float]] = defaultdict(list)
    cluster = Cluster(work, root)
    started: list[WorkerProcess] = []
    try:
        for label, env in settings.items():
            full = cluster.env(PRECISION="fp32", MODEL_NAME=served[label], **env)
            log_file = work / f"{served[label]}.log"
            started.append(WorkerProcess(full, log_file, served[label]).wait_ready(timeout=300))
        labels = list(settings)
        for label in labels:
            cluster.burst(files[:16], model=served[label])  # warm-up: threads, shapes
        for r in range(rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            measured = {}
            for label in order:
                WAITED.append(wait_quiet(quiet))
                measured[label] = cluster.burst(files, model=served[label]).throughput
                lone = cluster.idle_latency(
                    "samples/cat.jpg",
                    idle_jobs,
                    model=served[label],
                    settle=lambda: WAITED.append(wait_quiet(quiet)),
                )
                idle[label].append(lone.percentile(50) * 1e3)
            for label in labels:
                throughput[label].append(measured[label])
                ratio[label].append(measured[label] / measured["torch"])
            print(f"  service round {r + 1}/{rounds}: " + ", ".join(
                f"{label} {measured[label]:.1f}" for label in labels
            ))  # fmt: skip
    finally:
        for worker in started:
            worker.stop()
        cluster.close()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nservice, one worker per setting side by side (bursts alternate), {images} JPEGs "
        f"1024x768, fp32; range over {rounds} rounds"
    )
    print("| setting | img/s | / torch, same round | idle latency p50, ms (451x300) |")
    print("|---|---|---|---|")
    for label in settings:
        print(
            f"| {label} | {_span(throughput[label])} | {_span(ratio[label], 2)} | "
            f"{_span(idle[label])} |"
        )


def _span(values: list[float], digits: int = 1) -> str:
    lo, hi = min(values), max(values)
    if len(values) == 1:
        return f"{lo:.{digits}f}"
    return f"{lo:.{digits}f}-{hi:.{digits}f} (median {statistics.median(values):.{digits}f})"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.onnx_threads", description=__doc__)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--images", type=int, default=96, help="JPEGs per service burst")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="model-only timings per round")
    p.add_argument("--idle-jobs", type=int, default=3, help="lone jobs per setting and round")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each timing, wait up to this long for the CPUs to be idle (0: never)",
    )
    p.add_argument(
        "--settings",
        default=",".join(f"{t}:{s}" for t, s in SETTINGS),
        help="ONNX Runtime settings as THREADS:SPINNING, comma-separated",
    )
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--skip-model", action="store_true")
    args = p.parse_args()
    chosen = [(int(t), sp) for t, sp in (x.split(":") for x in args.settings.split(",") if x)]
    started = time.perf_counter()
    print(f"torch threads {torch.get_num_threads()}; CPU: {cpu_name()}")
    if not args.skip_model:
        model_only(args.arch, args.rounds, args.repeats, args.quiet_wait, chosen)
    if not args.skip_service:
        service(args.images, args.rounds, args.idle_jobs, args.quiet_wait, chosen)
    capped = sum(1 for w in WAITED if w >= args.quiet_wait > 0)
    print(
        f"\ntotal {time.perf_counter() - started:.0f}s, of which {sum(WAITED):.0f}s waiting for "
        f"other work to pass ({capped} of {len(WAITED)} timings began without a quiet moment)"
    )


if __name__ == "__main__":
    main()
