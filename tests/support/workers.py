"""Real `celery worker` processes, each logging to a file, and a factory that stops them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT
from tests.support.waiting import wait_for


class WorkerProcess:
    """One real `celery -A <app> worker` process (the project's `worker` app), logging to a file.

    `root` is the source tree it runs from (another checkout, for A/B benchmarks).
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        name: str,
        extra_args: list[str] | None = None,
        app: str = "worker",
        root: Path = ROOT,
    ):
        self.log_path = log_path
        self.name = name
        self._log = log_path.open("wb")
        self._terminated = False  # SIGTERM sent by `terminate`
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-l",
            "INFO",
            "-n",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            *(extra_args or []),
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> WorkerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
            return " ready." in self.log()

        wait_for(ready, timeout, f"worker {self.name} to be ready", interval=0.1)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        """Ask for a warm shutdown without waiting for it (`stop` waits)."""
        if self.proc.poll() is None and not self._terminated:
            self.kill(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class WorkerFactory:
    """Starts workers with a base environment; stops them all at teardown."""

    def __init__(self, base_env: dict[str, str], log_dir: Path):
        self.base_env = dict(base_env)  # its own: a module may change it for its workers only
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def start(
        self, wait: bool = True, extra_args: list[str] | None = None, **env: str
    ) -> WorkerProcess:
        full = {**self.base_env, **env}
        name = f"w{len(self.workers)}-{os.getpid()}"
        worker = WorkerProcess(full, self.log_dir / f"{name}.log", name, extra_args)
        self.workers.append(worker)
        return worker.wait_ready() if wait else worker

    def stop_all(self) -> None:
        # All asked at once: each takes up to a broker poll (0.5 s) and its own shutdown.
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.stop()
        self.workers.clear()
