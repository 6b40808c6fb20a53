"""Start and stop a local API and worker as real processes (for the demo and the tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(what: str, args: list[str], env: dict[str, str], cwd: Path) -> str:
    """``python -m ARGS``: its standard output; a RuntimeError with its output when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def migrate(env: dict[str, str], cwd: Path) -> None:
    _run("alembic upgrade head", ["alembic", "upgrade", "head"], env, cwd)


def create_admin_key(env: dict[str, str], cwd: Path, org: str) -> str:
    """An admin key of ``org`` (created when new), made as an operator would: with the
    nepenthe-admin command against the service's database."""
    args = ["app.cli", "create-key", "--org", org, "--create-org", "--name", f"{org}-admin"]
    return _run("nepenthe-admin create-key", args, env, cwd).strip()


class LocalService:
    """API (uvicorn) and one Celery worker sharing the settings in ``env``; ``admin_key`` is an
    admin key of the organisation ``org``."""

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        log_dir: Path,
        port: int | None = None,
        org: str = "local",
        worker_env: dict[str, str] | None = None,
    ):
        self.env = {**os.environ, **env}
        # Settings of the worker alone (another machine's, say: its own cache folder).
        self.worker_env = {**self.env, **(worker_env or {})}
        self.cwd = cwd
        self.log_dir = log_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        self.org = org
        self.admin_key = ""

    def __enter__(self) -> LocalService:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        migrate(self.env, self.cwd)
        self.admin_key = create_admin_key(self.env, self.cwd, self.org)
        self.start_api(wait=False)
        try:
            self.start_worker()
            self._wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start_api(self, wait: bool = True, processes: int = 1) -> None:
        """The API; ``processes`` > 1 runs uvicorn's supervisor with that many children."""
        workers = ["--workers", str(processes)] if processes > 1 else []
        self.api = self._spawn(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *workers,
            ],
        )
        if wait:
            self._wait_healthy()

    def stop_api(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.api, sig)
        self.api = None

    def start_worker(self) -> subprocess.Popen[bytes]:
        self.worker = self._spawn(
            "worker", self.worker_command(f"nepenthe-{self.port}@%h"), self.worker_env
        )
        return self.worker

    def worker_command(self, hostname: str) -> list[str]:
        """One Celery worker process (solo pool) named ``hostname``, consuming ``queues()``."""
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--hostname",
            hostname,
            "-Q",
            self.queues(),
        ]

    def queues(self) -> str:
        """The worker consumes both queues: unlearning jobs and webhook deliveries."""
        jobs = self.env.get("NEPENTHE_TASK_QUEUE", "unlearning")
        return f"{jobs},{self.env.get('NEPENTHE_WEBHOOK_QUEUE', 'webhooks')}"

    def _spawn(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        return subprocess.Popen(cmd, cwd=self.cwd, env=env or self.env, stdout=log, stderr=log)

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.api is not None
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited; see {self.log_dir / 'api.log'}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not become healthy; see {self.log_dir / 'api.log'}")

    def stop_worker(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Stop the worker with ``sig``; its exit code (None: it had to be killed)."""
        code = stop_process(self.worker, sig, timeout)
        self.worker = None
        return code

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stop_process(self.worker, signal.SIGTERM)
        stop_process(self.api, signal.SIGTERM)
        for log in self._logs:
            log.close()


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = 20) -> int | None:
    """Send ``sig`` and wait up to ``timeout`` seconds, then kill; the exit code (None: it had to
    be killed, or there was no process)."""
    if proc is None:
        return None
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


OnReady = Callable[[LocalService], None]


def print_console(service: LocalService) -> None:
    print(f"\nWeb console: {service.url}/console (sign in with the admin key {service.admin_key})")


def serve_until_interrupted(service: LocalService) -> None:
    """Leave the API and the worker running (the demo's --keep) until Ctrl-C."""
    print("The API and the worker keep running; press Ctrl-C to stop them.")
    try:
        while service.api is not None and service.api.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
