"""What `pip install actionstream` gets, and what its source distribution holds.

Both are built from a copy of the checkout's files through setuptools' own build hooks,
as pip builds them, so nothing is written into the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What an installed package needs beyond its Python files: the bundled model, the
# encoder training starts from, the stubs' types and the contract they were made from.
INSTALLED_DATA = (
    "actionstream/py.typed",
    "actionstream/v1/actionstream.proto",
    "actionstream/v1/actionstream_pb2.pyi",
    "actionstream/v1/actionstream_pb2_grpc.pyi",
    "actionstream/service/models/default.onnx",
    "actionstream/service/models/default.json",
)


def _checkout_files() -> list[str]:
    """The checkout's files, committed or not, but none git ignores."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (ROOT / name).exists())


def _copy(names: list[str], to: Path) -> None:
    for name in names:
        (to / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, to / name, follow_symlinks=False)


def _build(kind: str, source: Path, out: Path) -> Path:
    """Runs setuptools' PEP 517 hook `build_<kind>` in `source`; the file it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    name = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; "
            f"print(build_meta.build_{kind}(sys.argv[1]))",
            str(out),
        ],
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    return out / name


@pytest.fixture(scope="module")
def checkout_copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    pytest.importorskip("setuptools")
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list its files")
    files = _checkout_files()
    source = tmp_path_factory.mktemp("checkout")
    _copy(files, source)
    return source, files


def test_the_wheel_holds_the_model_the_types_and_the_proto(
    checkout_copy: tuple[Path, list[str]], tmp_path: Path
) -> None:
    source, _ = checkout_copy
    wheel = _build("wheel", source, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        proto = archive.read("actionstream/v1/actionstream.proto")
    assert set(INSTALLED_DATA) <= names
    assert any(n.startswith("actionstream/training/weights/") for n in names)
    assert proto == (ROOT / "protos" / "actionstream" / "v1" / "actionstream.proto").read_bytes()
    assert not [n for n in names if n.startswith(("tests/", "bench/", "deploy/"))]


def test_the_source_distribution_is_the_checkout_and_builds_the_same_wheel(
    checkout_copy: tuple[Path, list[str]], tmp_path: Path
) -> None:
    source, files = checkout_copy
    sdist = _build("sdist", source, tmp_path / "dist")
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        archive.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked" / top
    held = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if not p.is_dir()}
    # The tests and what they import, the .proto, deploy/, bench/, the docs: all of it,
    # with actionstream/service and actionstream/training, links in the checkout, as
    # folders of their own.
    links = {name for name in files if (ROOT / name).is_dir()}
    assert links == {"actionstream/service", "actionstream/training"}
    assert set(files) - links - held == set()
    wheel_from_checkout = _build("wheel", source, tmp_path / "a")
    wheel_from_sdist = _build("wheel", unpacked, tmp_path / "b")
    with zipfile.ZipFile(wheel_from_checkout) as a, zipfile.ZipFile(wheel_from_sdist) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
