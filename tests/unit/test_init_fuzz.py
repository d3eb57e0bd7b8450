"""kernels/fuzz: the guest init's JSON reader and tar reader/writer under
libFuzzer (ASan, UBSan) for a bounded time, from the seed corpora. Any
crash, sanitizer report or broken invariant (an archive writing outside
its directory) fails.

HBD_FUZZ_SECONDS sets each fuzzer's time: run-tests.sh (CI) gives 30 s
each; a plain pytest run 5 s. Skipped where clang or libFuzzer's runtime is
missing (apt install clang libclang-rt-dev)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_init_fuzzers_find_nothing() -> None:
    seconds = int(os.environ.get("HBD_FUZZ_SECONDS", "5"))
    proc = subprocess.run(["bash", str(REPO / "kernels" / "fuzz" / "run.sh"), str(seconds)],
                          capture_output=True, text=True, timeout=4 * seconds + 300)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fuzz_json: stat::number_of_executed_units" in proc.stdout
    if os.geteuid() == 0:
        assert "fuzz_archive: stat::number_of_executed_units" in proc.stdout
