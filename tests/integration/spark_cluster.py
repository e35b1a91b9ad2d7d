"""A real Spark standalone cluster on 127.0.0.1 for the tests: one master, two workers.

Started with PySpark's own launchers (``bin/spark-class …deploy.master.Master`` and
``…deploy.worker.Worker``), each in its own process group with its own work folder, so the
executors are separate JVMs (and Python workers) whose current folder is not the driver's.
The fixture waits until the master has registered both workers, yields the master URL and
stops every process group at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

WORKERS = 2
START_TIMEOUT = 90.0  # seconds: JVM start-ups on a loaded 2-core machine


@dataclass
class SparkCluster:
    url: str
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def conf(self) -> dict[str, str]:
        """Session settings for a driver on this machine submitting to the cluster."""
        return {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.memory": "1g",
            "spark.executor.memory": "512m",
            "spark.executor.cores": "1",
            "spark.cores.max": str(WORKERS),
            "spark.task.maxFailures": "2",  # a task failing on purpose is retried once, not three times
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


def start_cluster(root: Path) -> SparkCluster:
    """Start a master and ``WORKERS`` one-core workers under ``root``; return when all registered."""
    spark_class = _spark_class()
    port = _free_port()
    url = f"spark://127.0.0.1:{port}"
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env |= {
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(logs),
        "PYSPARK_PYTHON": sys.executable,
        # executors inherit the worker's environment: keep the driver's secrets out of it
        **{k: "" for k in env if k.startswith("DICOMLAKE_DEID__")},
    }
    cluster = SparkCluster(url, logs)

    def launch(name: str, args: list[str]) -> Path:
        log = logs / f"{name}.log"
        fh = log.open("wb")
        cluster.procs.append(
            subprocess.Popen(
                [str(spark_class), *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=root,
                env=env,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        )
        fh.close()
        return log

    try:
        master_log = launch(
            "master",
            [
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                "0",
            ],
        )
        _wait(master_log, re.compile(r"I have been elected leader|Starting Spark master"), cluster, "master start")
        for i in range(WORKERS):
            work = root / f"worker{i}"
            work.mkdir()
            launch(
                f"worker{i}",
                [
                    "org.apache.spark.deploy.worker.Worker",
                    url,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    "1g",
                    "--work-dir",
                    str(work),
                    "--webui-port",
                    "0",
                ],
            )
        _wait(master_log, re.compile(r"Registering worker"), cluster, "worker registration", count=WORKERS)
    except BaseException:
        _stop(cluster.procs)
        raise
    return cluster


def _wait(log: Path, pattern: re.Pattern[str], cluster: SparkCluster, what: str, count: int = 1) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if len(pattern.findall(text)) >= count:
            return
        dead = [p for p in cluster.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(
                f"a Spark process exited during {what} (rc {dead[0].returncode}); logs in {cluster.logs}"
            )
        time.sleep(0.25)
    raise TimeoutError(f"Spark standalone {what} took over {START_TIMEOUT:.0f} s; logs in {cluster.logs}")


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        msg = "no Java runtime: apt-get install default-jre-headless (make install does it)"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    try:
        import pyspark  # noqa: F401
    except ImportError:
        msg = "PySpark is not installed (pip install 'dicomlake[spark]'; make install does it)"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    cluster = start_cluster(tmp_path_factory.mktemp("spark-cluster"))
    try:
        yield cluster
    finally:
        _stop(cluster.procs)
