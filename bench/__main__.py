"""`python -m bench [--quick]`: every number of docs/performance.md, from one run.

Prints a table plus the ratios the throughput issue asks for, writes bench.json, bench.md and
batch-size.png under --out. Uses its own redis-server and real worker processes.

`--baseline REF` also runs the workers of another commit (extracted with `git archive` into the
run's temporary folder), beside this tree's on their own queue: each service burst goes to one
and then the other (in turns), inside the same bracket of in-process baselines, so the table
has both trees' service / ceiling from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import inprocess
from bench.images import SAMPLES, SIZES, make_set
from bench.machine import cpu_name
from bench.overhead import checkout
from bench.quiet import wait_quiet
from bench.report import Report, plot
from bench.service import Cluster
from tests.support.workers import WorkerProcess
from worker.model.classifier import Classifier
from worker.settings import Settings


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer images: a few minutes on 2 cores")
    p.add_argument("--images", type=int, help="JPEGs per size (default 192, quick 48)")
    p.add_argument("--precision", default=Settings().precision, help="the default precision")
    p.add_argument("--also", default="int8", help="a second precision to measure, or none")
    p.add_argument(
        "--backends",
        default="onnxruntime,torch",
        help="backends for the default precision (CPU only; ONNX Runtime runs fp32)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=0, help="MAX_BATCH_SIZE (0: the default)")
    p.add_argument("--standin", default="sleep:50ms", help="stand-in model for scaling")
    p.add_argument("--scaling", default="1,2,4", help="worker counts for the stand-in")
    p.add_argument("--service-sweep", default="", help="batch sizes for end-to-end runs, 1,4,8")
    p.add_argument("--workers", type=int, default=1, help="worker processes for the service runs")
    p.add_argument("--bulk", type=int, default=0, help="also bulk messages of N images")
    p.add_argument("--sizes", default=",".join(SIZES), help="image sizes, e.g. 1024x768")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="on a shared machine: before each timing, wait up to this long for idle CPUs",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--baseline", help="a git ref whose workers run beside this tree's")
    return p.parse_args()


BASELINE = "baseline"  # --baseline's workers' served name (MODEL_NAME): their own queue


Key = tuple[str, str]  # (precision, backend) as loaded: auto resolved, a fallback named


class Bench:
    """One run's state: the options, the images, the models loaded and what they measured.

    Each method is one step of main(); the report's rows and ratios come out in the order the
    steps run, so main() fixes the table's order too."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n: int = args.images or (48 if args.quick else 192)
        self.settings = Settings(device=args.device, max_batch_size=args.batch_size)
        self.batch = self.settings.effective_batch_size
        self.draft = self.settings.draft_decode
        self.report = Report(
            info={"images_per_size": self.n, "batch_size": self.batch, "draft_decode": self.draft}
        )
        self.waited: list[float] = []  # --quiet-wait: seconds spent waiting for other work to pass
        self.models: dict[Key, Classifier] = {}
        self.sweeps: dict[Key, dict[int, float]] = {}  # model-only seconds per batch size
        self.seeds: dict[str, list[float]] = {}  # seed-loop img/s per size, every bracket
        self.services: dict[Key, dict[str, float]] = {}  # service img/s per size
        self.ceilings: dict[Key, dict[str, float]] = {}  # in-process ceiling img/s per size
        self.service_sweep: dict[int, float] = {}  # service img/s per MAX_BATCH_SIZE
        self.sweep: dict[int, float] = {}  # the default model's sweep: the plot's curve
        self.work = Path(tempfile.mkdtemp(prefix="imgqueue-bench-"))
        self.root = self.work / "images"
        self.started = 0.0
        self.names: dict[str, list[str]] = {}
        self.seed_files: dict[str, list[Path]] = {}
        self.baseline_root: Path | None = None  # --baseline's tree
        self.bursts = 0  # which tree's burst goes first alternates

    @property
    def default(self) -> Key:
        """The first model loaded: the default precision on the first backend."""
        return next(iter(self.models))

    def settle(self) -> None:
        self.waited.append(wait_quiet(self.args.quiet_wait))

    def make_images(self) -> None:
        """The samples, plus --images distinct JPEGs of each size, under a private folder."""
        for sample in SAMPLES.glob("*.jpg"):
            (self.root / "samples").mkdir(parents=True, exist_ok=True)
            shutil.copy(sample, self.root / "samples" / sample.name)
        self.started = time.perf_counter()
        sizes = [size for size in self.args.sizes.split(",") if size]
        self.names = {size: make_set(self.root, size, self.n) for size in sizes}
        took = time.perf_counter() - self.started
        print(f"made {self.n} JPEGs per size in {took:.1f}s under {self.root}")

    def measure_models(self) -> None:
        """1 + model latency: in-process, same precision, backend and batch size as the
        service. The default precision runs on each backend (ONNX Runtime: fp32 on a CPU only,
        see worker/model/onnx.py), the second precision on torch."""
        args = self.args
        backends = [b for b in args.backends.split(",") if b] if args.device == "cpu" else ["torch"]
        wanted = [(args.precision, b) for b in backends]
        wanted += [] if args.also == "none" else [(args.also, "torch")]
        for precision, backend in wanted:
            model = inprocess.load(precision, args.device, backend)
            key = (model.precision, model.backend)  # what ran: auto resolved, a fallback named
            if key in self.models:
                continue
            self.models[key] = model
            if precision == args.precision:
                sizes = [1, 2, 4, 8] if args.quick else [1, 2, 4, 8, 16, 32]
                sweep = inprocess.batch_sweep(
                    model, sorted({*sizes, self.batch}), settle=self.settle
                )
                self.sweeps[key] = sweep
                for b, secs in sweep.items():
                    self.report.add(
                        f"model only, batch {b}, {model.backend}",
                        model.precision,
                        "-",
                        b / secs,
                        p50_ms=secs * 1e3,
                    )

    def describe_run(self) -> None:
        """What ran where, and how the baselines are taken; picks the seed loop's files."""
        info = self.report.info
        info["precision"], info["backend"] = self.default
        info["cpu"] = cpu_name()
        # This machine's speed drifts by up to 10% over minutes (a shared VM): the ceiling and
        # the seed loop are measured right before and right after each service run, with the
        # worker idle, and each ratio divides by the mean of that bracket.
        info["baselines"] = "measured before and after each service run; ratios use the mean"
        self.sweep = self.sweeps[self.default]  # the plot's model-only curve
        seed_count = min(48, max(8, self.n // 8))  # one at a time on the CPU: enough to time it
        self.seed_files = {
            size: [self.root / f for f in files[:seed_count]] for size, files in self.names.items()
        }

    def baselines(self, key: Key, size: str) -> tuple[float, float]:
        """The in-process ceiling and the seed loop, img/s, with the worker idle."""
        paths = [self.root / f for f in self.names[size]]
        self.settle()
        ceiling = inprocess.ceiling(self.models[key], paths, self.batch, self.draft)
        return ceiling, inprocess.seed_loop(self.seed_files[size])

    def measure_services(self, cluster: Cluster) -> None:
        """2 + 3 + 4: the seed loop, the real service (each configuration), latency."""
        self.seeds = {size: [] for size in self.names}
        self.services = {key: {} for key in self.models}
        self.ceilings = {key: {} for key in self.models}
        env = {"DEVICE": self.args.device, "MAX_BATCH_SIZE": str(self.batch)}
        for key in self.models:
            precision, backend = key
            with (
                cluster.workers(self.args.workers, PRECISION=precision, BACKEND=backend, **env),
                self.baseline_workers(cluster, PRECISION=precision, BACKEND=backend, **env),
            ):
                first = next(iter(self.names.values()))
                # Warm-up: threads, shapes.
                cluster.burst(first[: 2 * self.batch * self.args.workers])
                if self.baseline_root is not None:
                    cluster.burst(first[: 2 * self.batch * self.args.workers], model=BASELINE)
                for size, files in self.names.items():
                    self.service_throughput(cluster, key, size, files)
                if key in self.sweeps:
                    self.idle_latency(cluster, key, first)
                if key == self.default:
                    self.under_load(cluster, key, first)

    @contextlib.contextmanager
    def baseline_workers(self, cluster: Cluster, **env: str) -> Iterator[None]:
        """--baseline: as many workers from that tree, on their own queue, beside this tree's
        (started without flushing Redis, which this tree's workers use)."""
        root = self.baseline_root
        started: list[WorkerProcess] = []
        try:
            for i in range(self.args.workers if root is not None else 0):
                assert root is not None
                full = cluster.env_for(root, MODEL_NAME=BASELINE, **env)
                log_file = self.work / f"{BASELINE}{i}.log"
                started.append(WorkerProcess(full, log_file, f"{BASELINE}{i}", root=root))
            for worker in started:
                worker.wait_ready(timeout=180)
            yield
        finally:
            for worker in started:
                worker.stop()

    def service_throughput(self, cluster: Cluster, key: Key, size: str, files: list[str]) -> None:
        """One burst of every image of `size` (and one to --baseline's workers), bracketed by
        the baselines it is divided by."""
        args, report = self.args, self.report
        precision, backend = key
        ceiling_before, seed_before = self.baselines(key, size)
        self.settle()
        base = None
        self.bursts += 1
        if self.baseline_root is not None and self.bursts % 2:
            base = cluster.burst(files, model=BASELINE)
            self.settle()
        run = cluster.burst(files)
        if self.baseline_root is not None and base is None:
            self.settle()
            base = cluster.burst(files, model=BASELINE)
        ceiling_after, seed_after = self.baselines(key, size)
        ceiling = (ceiling_before + ceiling_after) / 2
        seed = (seed_before + seed_after) / 2
        self.seeds[size] += [seed_before, seed_after]
        self.services[key][size], self.ceilings[key][size] = run.throughput, ceiling
        report.add(f"in-process ceiling, {backend}", precision, size, ceiling)
        service = f"service, {args.workers} worker(s), {backend}"
        report.add(service, precision, size, run.throughput)
        label = f"{precision} {backend} {size}"
        report.ratio(f"service / ceiling, {label}", run.throughput / ceiling, ">= 0.9")
        if base is not None:
            report.add(f"service {args.baseline}, {args.workers} worker(s), {backend}", precision,
                       size, base.throughput)  # fmt: skip
            what = f"service {args.baseline} / ceiling, {label}"
            report.ratio(what, base.throughput / ceiling, "-")
            # Other work on a shared VM shows as a bracket whose ends disagree.
            spread = max(ceiling_before, ceiling_after) / min(ceiling_before, ceiling_after)
            report.ratio(f"ceiling bracket spread, {label}", spread, "near 1: undisturbed")
        report.ratio(
            f"service / seed loop, {label}",
            run.throughput / seed,
            ">= 2.5 (default), >= 4 (int8)",
        )
        if args.bulk > 1:
            bulk = cluster.burst(files, args.bulk)
            what = f"service, bulk {args.bulk}, {args.workers} worker(s), {backend}"
            report.add(what, precision, size, bulk.throughput)
            report.ratio(f"bulk / single, {label}", bulk.throughput / run.throughput, "> 1")

    def idle_latency(self, cluster: Cluster, key: Key, first: list[str]) -> None:
        """One job at a time on an idle worker: the sample, then an image of the first size."""
        precision, backend = key
        idle = cluster.idle_latency("samples/cat.jpg", 7, settle=self.settle)
        self.report.add(
            f"idle latency, 1 job (451x300), {backend}",
            precision,
            "sample",
            None,
            p50_ms=idle.percentile(50) * 1e3,
        )
        idle_big = cluster.idle_latency(first[0], 7, settle=self.settle)
        self.report.add(
            f"idle latency, 1 job, {backend}",
            precision,
            next(iter(self.names)),
            None,
            p50_ms=idle_big.percentile(50) * 1e3,
        )
        # An idle job within the model's own batch-1 time (this backend's) + 25 ms.
        budget = self.sweeps[key][1] + 0.025
        self.report.ratio(
            f"idle latency / (model batch-1 + 25 ms), {backend}",
            idle.percentile(50) / budget,
            "<= 1.0",
        )

    def under_load(self, cluster: Cluster, key: Key, first: list[str]) -> None:
        """Latency with the workers' full concurrency kept in flight (closed loop)."""
        precision, backend = key
        window = self.settings.effective_concurrency * self.args.workers
        loaded = cluster.closed_loop(first, window)
        self.report.add(
            f"under load, {window} in flight, {backend}",
            precision,
            next(iter(self.names)),
            loaded.throughput,
            p50_ms=loaded.percentile(50) * 1e3,
            p99_ms=loaded.percentile(99) * 1e3,
        )

    def compare_backends(self) -> None:
        """ONNX Runtime against torch, both fp32, both measured in this run."""
        ort, eager = ("fp32", "onnxruntime"), ("fp32", "torch")
        if ort not in self.services or eager not in self.services:
            return
        for size in self.names:
            self.report.ratio(
                f"service onnxruntime / service torch, fp32 {size}",
                self.services[ort][size] / self.services[eager][size],
                ">= 1.35 (1024x768, 1 worker)",
            )
            self.report.ratio(
                f"ceiling onnxruntime / ceiling torch, fp32 {size}",
                self.ceilings[ort][size] / self.ceilings[eager][size],
                "-",
            )
        sweeps = self.sweeps
        self.report.ratio(
            "model only onnxruntime / torch, fp32 batch 1",
            sweeps[eager][1] / sweeps[ort][1] if eager in sweeps and ort in sweeps else 0.0,
            "-",
        )

    def add_seed_loop(self) -> None:
        """The seed loop per size: the mean of every bracket around every service run."""
        for size, values in self.seeds.items():
            self.report.add(
                "seed loop (fp32, 1 at a time)", "fp32", size, sum(values) / len(values)
            )

    def sweep_service_batch(self, cluster: Cluster) -> None:
        """--service-sweep: the default model's service at each MAX_BATCH_SIZE, one worker."""
        precision, backend = self.default
        for b in [int(x) for x in self.args.service_sweep.split(",") if x]:
            with cluster.workers(
                1,
                PRECISION=precision,
                BACKEND=backend,
                DEVICE=self.args.device,
                MAX_BATCH_SIZE=str(b),
            ):
                size, files = next(iter(self.names.items()))
                cluster.burst(files[: 2 * b])
                run = cluster.burst(files)
                self.service_sweep[b] = run.throughput
                label = f"service, MAX_BATCH_SIZE={b}, {backend}"
                self.report.add(label, precision, size, run.throughput)

    def measure_scaling(self, cluster: Cluster) -> None:
        """5: the stand-in model measures the queue, not the CPU."""
        args = self.args
        scaling = {}
        for count in [int(x) for x in args.scaling.split(",") if x]:
            with cluster.workers(count, MODEL=args.standin, MAX_BATCH_SIZE="1"):
                jobs = ["samples/cat.jpg"] * ((60 if args.quick else 150) * count)
                cluster.burst(["samples/cat.jpg"] * 2 * count)
                run = cluster.burst(jobs)
                scaling[count] = run.throughput
                self.report.add(
                    f"stand-in {args.standin}, {count} worker(s)",
                    "none",
                    "sample",
                    run.throughput,
                    failed=run.failed,
                )
        if len(scaling) > 1:
            lo, hi = min(scaling), max(scaling)
            self.report.ratio(
                f"stand-in scaling, {hi} vs {lo} worker(s)",
                scaling[hi] / scaling[lo],
                f">= {0.875 * hi / lo:.1f}",
            )

    def finish(self) -> None:
        """Print the table, write bench.json, bench.md and the plot, remove the images."""
        args, waited = self.args, self.waited
        print()
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
        if args.quiet_wait:
            self.report.info["quiet_wait_s"] = round(sum(waited), 1)
            capped = sum(1 for w in waited if w >= args.quiet_wait)
            timings = f"{capped} of {len(waited)} timings without"
            print(f"waited {sum(waited):.0f}s for quiet CPUs; {timings}")
        print(self.report.render())
        self.report.save(args.out)
        if plot(
            self.sweep, self.service_sweep, " ".join(self.default), args.out / "batch-size.png"
        ):
            print(f"\nplot: {args.out / 'batch-size.png'}")
        print(f"total {time.perf_counter() - self.started:.0f}s; results in {args.out}/")
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> None:
    bench = Bench(parse_args())
    bench.make_images()
    bench.measure_models()
    bench.describe_run()
    if bench.args.baseline:
        bench.baseline_root = checkout(bench.args.baseline, bench.work / BASELINE)
        bench.report.info["baseline"] = bench.args.baseline
    cluster = Cluster(bench.work, bench.root)
    try:
        # The order matters: the table lists rows and ratios in the order they are measured.
        bench.measure_services(cluster)
        bench.compare_backends()
        bench.add_seed_loop()
        bench.sweep_service_batch(cluster)
        bench.measure_scaling(cluster)
    finally:
        cluster.close()
    bench.finish()


if __name__ == "__main__":
    main()
