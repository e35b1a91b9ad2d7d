"""Run one fuzz target under atheris: ``python -m fuzz.harness TARGET [libFuzzer flags]``.

The target module (``fuzz.fuzz_<TARGET>``) is imported inside
:func:`atheris.instrument_imports`, so dicomlake code it imports is instrumented for
coverage. Around the target's ``check`` this adds what libFuzzer cannot see in Python:

- a count of executions and of *distinct* inputs (8-byte BLAKE2b digests) and their XOR
  (``inputs_digest``: two runs that executed the same inputs have the same one), written to
  the JSON file named by ``FUZZ_STATS`` twice a second and on a crash; with ``-runs=N``
  only at the last inputs (libFuzzer ends the process without Python's ``atexit``; and a
  write on a clock would shift later objects' addresses, so a repeatable run would not be);
- a ceiling on address space (``FUZZ_MEMORY_MB`` above the start, default 1024), so an
  allocation sized from a declared length fails as ``MemoryError`` (a crash) instead of
  swapping the machine.

Hangs are libFuzzer's ``-timeout``; an uncaught exception is a crash and libFuzzer writes
the input to ``-artifact_prefix``.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable


class Stats:
    """Executions and distinct inputs of one fuzzing process."""

    def __init__(self, path: str | None, runs: int | None = None) -> None:
        self.path = path
        self.runs = runs
        """libFuzzer's ``-runs``: it exits without Python's atexit, so the last inputs write the file."""
        self.executions = 0
        self.digests: set[bytes] = set()
        self._xor = 0
        self.max_len = 0
        self.started = time.monotonic()
        self._next_write = self.started + 0.5

    def hit(self, data: bytes) -> None:
        self.executions += 1
        digest = hashlib.blake2b(data, digest_size=8).digest()
        if digest not in self.digests:
            self.digests.add(digest)
            self._xor ^= int.from_bytes(digest, "big")
        if len(data) > self.max_len:
            self.max_len = len(data)
        if self.runs is not None:
            # a repeatable run allocates nothing on a clock: objects' addresses (their hashes,
            # hence set orders and coverage) must depend on the inputs alone
            if self.executions >= self.runs - 2:
                self.write()
            return
        now = time.monotonic()
        if now >= self._next_write:
            self._next_write = now + 0.5
            self.write()

    def fingerprint(self) -> str:
        """The XOR of the distinct inputs' digests: equal for two runs that ran the same inputs."""
        return f"{self._xor:016x}"

    def write(self) -> None:
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(
                {
                    "executions": self.executions,
                    "distinct_inputs": len(self.digests),
                    "inputs_digest": self.fingerprint(),
                    "max_input_len": self.max_len,
                    "seconds": round(time.monotonic() - self.started, 1),
                },
                fh,
            )
        os.replace(tmp, self.path)


def _limit_memory() -> None:
    extra_mb = int(os.environ.get("FUZZ_MEMORY_MB", "1024"))
    if extra_mb <= 0:
        return
    with open("/proc/self/statm") as fh:
        vm_pages = int(fh.read().split()[0])
    now = vm_pages * os.sysconf("SC_PAGE_SIZE")
    limit = now + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def module_name(target: str) -> str:
    """``fuzz.fuzz_<target>`` (a ``-`` in a target's name is ``_`` in its module's)."""
    return "fuzz.fuzz_" + target.replace("-", "_")


def load(target: str, *, instrument: bool) -> Callable[[bytes], None]:
    """The ``check`` of ``fuzz.fuzz_<target>``, imported under instrumentation when asked."""
    name = module_name(target)
    if instrument:
        import atheris

        with atheris.instrument_imports(include=["dicomlake", name]):
            mod = importlib.import_module(name)
    else:
        mod = importlib.import_module(name)
    warm = getattr(mod, "warm_up", None)
    if warm is not None:
        warm()
    return mod.check  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    import atheris

    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2:
        raise SystemExit("usage: python -m fuzz.harness TARGET [libFuzzer flags]")
    target = argv.pop(1)
    check = load(target, instrument=True)
    runs = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("-runs=")), None)
    stats = Stats(os.environ.get("FUZZ_STATS"), runs if runs is not None and runs >= 0 else None)
    atexit.register(stats.write)

    def one_input(data: bytes) -> None:
        stats.hit(data)
        try:
            check(data)
        except BaseException:
            stats.write()
            raise

    _limit_memory()
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
