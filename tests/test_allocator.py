"""training/allocator.py: freed memory stays in the process instead of going back to the
kernel, so a step's large buffers are not faulted in again page by page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_FAULTS = """
import resource, sys
import numpy as np
from actionstream.training.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else False
for _ in range(2):
    np.ones(8 << 20)  # 64 MB, as a training step's activations
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(8 << 20)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_faulting_it_in_again() -> None:
    kept, kept_faults = _faults("kept")
    _, default_faults = _faults("default")
    assert kept
    # 20 buffers of 64 MB: glibc maps and unmaps each, where kept memory is reused as it
    # is (none). At least 32 faults apiece, as 2-MB huge pages when the kernel has them
    # free (numpy asks for them); 544 here in a quiet run, 33 in one beside other tests.
    assert default_faults >= 20 * 32, default_faults
    assert kept_faults < default_faults / 20, (kept_faults, default_faults)


def test_glibc_settings_of_the_users_own_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from actionstream.training.allocator import keep_freed_memory

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=65536")
    assert not keep_freed_memory()
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert not keep_freed_memory()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_the_training_commands_keep_freed_memory(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Process-wide, so the commands set it, before their work (here refused at once).
    pytest.importorskip("torch")
    from actionstream import cli
    from actionstream.training import allocator

    calls: list[str] = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(command) or True)
    args = {
        "train": ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
        "evaluate": ["evaluate", str(tmp_path / "missing")],
    }[command]
    assert cli.main(args) == 1
    assert calls == [command]
