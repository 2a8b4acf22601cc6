"""`python -m bench.object_stores`: which S3 client the worker reads objects with (docs/objects.md).

GETs of 100 KB objects from a loopback S3 (moto's server, in a process of its own) by obstore,
boto3 and, where it is installed, s3fs, each client in a fresh process, one GET at a time as a
worker thread makes them: objects/s (wall time: moto is most of it) and the client process's
own CPU per GET (`time.process_time`, every thread of the process: what the client costs a
worker), plus each library's install weight (its files and its dependencies', from their
installed metadata). Prints ratios to obstore.

    python -m bench.object_stores [--objects 200] [--size 102400] [--rounds 3] [--s3fs-path DIR]

s3fs pins an older botocore than boto3's, so it is measured from an install of its own that
only its process sees: `pip install --target DIR s3fs`, then `--s3fs-path DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

BUCKET = "bench"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
CLIENTS = ("obstore", "boto3", "s3fs")
ROOT = Path(__file__).resolve().parent.parent


# -- one client, in its own process --------------------------------------------------------


def getter(name: str, endpoint: str) -> Any:
    """A function key -> bytes for the client `name`, made as a worker would make it once."""
    if name == "obstore":
        import obstore
        from obstore.store import S3Store

        store = S3Store(BUCKET, endpoint=endpoint, client_options={"allow_http": True})
        return lambda key: bytes(obstore.get(store, key).bytes())
    if name == "boto3":
        import boto3  # type: ignore[import-untyped]

        s3 = boto3.client("s3", endpoint_url=endpoint)
        return lambda key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    import s3fs  # type: ignore[import-not-found]

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    return lambda key: fs.cat_file(f"{BUCKET}/{key}")


def install_weight(name: str) -> tuple[int, list[str]]:
    """Bytes of the distribution's installed files and its dependencies' (markers evaluated,
    no extras), and their names."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: dict[str, int] = {}
    todo = [name]
    while todo:
        dist_name = canonicalize_name(todo.pop())
        if dist_name in seen:
            continue
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        files = [f.locate() for f in dist.files or ()]
        seen[dist_name] = sum(Path(f).stat().st_size for f in files if Path(f).is_file())
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sum(seen.values()), sorted(seen)


def measure(name: str, endpoint: str, objects: int, rounds: int) -> dict[str, Any]:
    started = time.perf_counter()
    get = getter(name, endpoint)
    imported = time.perf_counter() - started
    keys = [f"obj{i:05d}" for i in range(objects)]
    for key in keys[:5]:  # connections, credentials, first-call paths
        get(key)
    rates, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        size = sum(len(get(key)) for key in keys)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert size > 0
        rates.append(objects / wall)
        cpus.append(cpu / objects)
    weight, packages = install_weight(name)
    return {
        "name": name,
        "version": metadata.version(name),
        "objects_per_s": statistics.median(rates),
        "cpu_per_get_s": statistics.median(cpus),
        "setup_s": imported,
        "weight_bytes": weight,
        "packages": packages,
    }


# -- the run -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto's server did not answer: {log.read_text()[-2000:]}")


def fill(endpoint: str, objects: int, size: int) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for i in range(objects):
        s3.put_object(Bucket=BUCKET, Key=f"obj{i:05d}", Body=os.urandom(size))


def run_client(name: str, endpoint: str, args: argparse.Namespace) -> dict[str, Any] | None:
    env = {**os.environ, **CREDENTIALS}
    if name == "s3fs":
        if not args.s3fs_path:
            return None
        env["PYTHONPATH"] = os.pathsep.join([args.s3fs_path, env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--child", name, "--endpoint", endpoint]
    command += ["--objects", str(args.objects), "--rounds", str(args.rounds)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        print(f"{name}: failed: {done.stderr[-1500:]}", file=sys.stderr)
        return None
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def report(results: list[dict[str, Any]], args: argparse.Namespace, cpu: str) -> None:
    base = results[0]
    print(f"{args.objects} GETs x {args.rounds} rounds of {args.size} B objects, one at a time,")
    print(f"loopback moto server (its own process); {cpu}\n")
    head = f"{'client':<16}{'objects/s':>10}{'CPU ms/GET':>12}{'setup s':>9}{'install MB':>12}"
    print(head + f"{'rate':>7}{'CPU':>7}{'weight':>8}  (ratios to obstore)")
    for r in results:
        print(
            f"{r['name'] + ' ' + r['version']:<16}{r['objects_per_s']:>10.0f}"
            f"{r['cpu_per_get_s'] * 1000:>12.3f}{r['setup_s']:>9.2f}"
            f"{r['weight_bytes'] / 1e6:>12.1f}"
            f"{r['objects_per_s'] / base['objects_per_s']:>7.2f}"
            f"{r['cpu_per_get_s'] / base['cpu_per_get_s']:>7.2f}"
            f"{r['weight_bytes'] / base['weight_bytes']:>8.2f}"
        )
    for r in results:
        print(f"  {r['name']} installs: {', '.join(r['packages'])}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.object_stores", description=__doc__)
    p.add_argument("--objects", type=int, default=200, help="objects, each GET once a round")
    p.add_argument("--size", type=int, default=100 * 1024, help="bytes per object")
    p.add_argument("--rounds", type=int, default=3, help="rounds per client (the median counts)")
    p.add_argument("--s3fs-path", default="", help="a `pip install --target` dir holding s3fs")
    p.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.endpoint, args.objects, args.rounds)))
        return
    sys.path.insert(0, str(ROOT))
    from bench.machine import cpu_name

    os.environ.update(CREDENTIALS)
    workdir = Path(tempfile.mkdtemp(prefix="bench-objects-"))
    moto, endpoint = start_moto(workdir / "moto.log")
    try:
        fill(endpoint, args.objects, args.size)
        results = [r for name in CLIENTS if (r := run_client(name, endpoint, args)) is not None]
    finally:
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args, cpu_name())


if __name__ == "__main__":
    main()
