"""A private Docker engine for the deployment tests, and its slow inputs, cached.

The engine is a `dockerd` of our own (data, exec root and socket in a fresh
temporary folder) with no bridge, no iptables and no NAT: containers use the
host network only. Its base image is made here with debootstrap from the
Debian mirror that this machine's apt sources name, since no registry can be
reached; the wheels the image installs are downloaded on the host with pip
and installed offline inside the build. Both are cached under
~/.cache/actionstream-docker, keyed by everything that goes into them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
WHEELS_DIR = ROOT / "deploy" / "wheels"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "actionstream-docker"

# Room the engine needs for both images and the layers that build them
# (3.6 GB measured), with headroom.
ENGINE_BYTES = 8 * 2**30
# What the images need from Debian: an interpreter that can make venvs.
BASE_PACKAGES = ("python3", "python3-venv")
# Bump when the recipe below changes in a way its inputs do not show.
BASE_RECIPE = 1


class EngineError(Exception):
    """The engine or one of its inputs could not be made; the message says why."""


def run(
    cmd: Sequence[str | Path],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `cmd`; on failure raises EngineError carrying its output's tail."""
    args = [str(c) for c in cmd]
    result = subprocess.run(
        args, env=env, timeout=timeout, input=stdin, capture_output=True, text=True
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise EngineError(f"`{' '.join(args)}` exited {result.returncode}:\n{tail}")
    return result


def _unmount_under(path: Path) -> None:
    """Lazily unmounts whatever is still mounted below `path`, deepest first.

    A killed dockerd leaves overlay mounts, a failed debootstrap its /proc:
    deleting the folder must never walk into them.
    """
    prefix = str(path.resolve()) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_tree(path: Path) -> None:
    if path.exists():
        _unmount_under(path)
        shutil.rmtree(path)


def _prune_stale(keep: Path, pattern: str) -> None:
    """Deletes the cache entries `keep` replaces: a changed input made them stale."""
    for entry in CACHE.glob(pattern):
        if entry == keep:
            continue
        if entry.is_dir():
            remove_tree(entry)
        else:
            entry.unlink()


# --- the base image -----------------------------------------------------------


def _os_codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value:
            return value.strip('"')
    raise EngineError("/etc/os-release names no VERSION_CODENAME: not a Debian release")


def _apt_sources() -> Iterator[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of every `deb` source, one-line and deb822 formats."""
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                yield words[1], [words[2]], words[3:]
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line and not line.startswith("#") and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split():
                suites = fields.get("suites", "").split()
                components = fields.get("components", "").split()
                for uri in fields.get("uris", "").split():
                    yield uri, suites, components


def debian_mirror() -> tuple[str, str]:
    """(mirror URI, suite): the apt source that carries this release's main archive."""
    suite = _os_codename()
    for uri, suites, components in _apt_sources():
        if suite in suites and "main" in components:
            return uri, suite
    raise EngineError(f"no apt source in /etc/apt lists `{suite} main` to debootstrap from")


def base_tarball() -> Path:
    """The root filesystem of a minimal Debian with python3 and venv, as a tar (cached)."""
    mirror, suite = debian_mirror()
    recipe = json.dumps([BASE_RECIPE, mirror, suite, BASE_PACKAGES])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    tarball = CACHE / f"base-{suite}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=CACHE))
    try:
        rootfs = work / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                suite,
                rootfs,
                mirror,
            ],
            timeout=900,
        )
        # What the official images drop too: downloaded packages and indexes.
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        for pkgcache in (rootfs / "var/cache/apt").glob("*.bin"):
            pkgcache.unlink()
        partial = work / "base.tar"
        run(["tar", "-C", rootfs, "--numeric-owner", "-cf", partial, "."])
        os.replace(partial, tarball)
    finally:
        remove_tree(work)
    _prune_stale(tarball, "base-*.tar")
    return tarball


# --- the wheels ---------------------------------------------------------------


def torch_pin() -> str:
    """The torch requirement the Dockerfile's train stage installs, e.g. torch==2.13.0."""
    match = re.search(r"\btorch==[\w.+]+", DOCKERFILE.read_text())
    if match is None:
        raise EngineError(f"{DOCKERFILE} pins no torch==VERSION for its train stage")
    return match.group(0)


def image_requirements() -> list[str]:
    """Everything pip needs offline to build both images, read from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [
        *project["build-system"]["requires"],
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["train"],
        torch_pin(),
    ]


def wheels() -> Path:
    """A folder holding every wheel the images install, for this Python (cached)."""
    requirements = image_requirements()
    recipe = json.dumps([requirements, sys.version_info[:2], sys.platform, os.uname().machine])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    folder = CACHE / f"wheels-{key}"
    if (folder / ".complete").exists():
        return folder
    remove_tree(folder)
    folder.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
    run([*pip, "--dest", folder, *requirements], timeout=900)
    (folder / ".complete").touch()
    _prune_stale(folder, "wheels-*")
    return folder


@contextmanager
def staged_wheels(source: Path) -> Iterator[None]:
    """Puts the wheels in deploy/wheels/ (the build context's place for them) meanwhile."""
    staged = []
    try:
        for wheel in sorted(source.glob("*.whl")):
            target = WHEELS_DIR / wheel.name
            if not target.exists():
                try:
                    os.link(wheel, target)
                except OSError:  # another file system
                    shutil.copy2(wheel, target)
                staged.append(target)
        yield
    finally:
        for target in staged:
            target.unlink(missing_ok=True)


# --- the engine ---------------------------------------------------------------


def _memory_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _engine_parent() -> Path:
    """Where the engine keeps its files: in memory (/dev/shm) when there is room.

    Layers are written once and deleted minutes later. Measured here (2 cores,
    busy): on disk, building both images took 246-302 s and deleting the
    engine's files up to 143 s; in tmpfs, 83 s and 1.3 s.
    """
    shm = Path("/dev/shm")
    with open("/proc/mounts") as mounts:
        options = [line.split()[3] for line in mounts if line.split()[1] == str(shm)]
    if (
        options
        and "noexec" not in options[-1].split(",")
        and shutil.disk_usage(shm).free >= ENGINE_BYTES
        and _memory_available() >= ENGINE_BYTES
    ):
        return shm
    return Path("/tmp")


class Engine:
    """A dockerd of our own; `docker(...)` talks to it. Use as a context manager."""

    def __init__(self) -> None:
        # Short: containerd's sockets live under the exec root and a unix
        # socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="asd-", dir=_engine_parent()))
        self.host = f"unix://{self.dir}/docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": self.host}
        self.log_path = self.dir / "dockerd.log"
        self.storage_driver = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.dir / "daemon.json"
        config.write_text("{}\n")  # not the host's /etc/docker/daemon.json
        # overlay2 where the file system allows it, else vfs (slow, always works).
        for driver in ("overlay2", "vfs"):
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [
                        "dockerd",
                        f"--config-file={config}",
                        "--bridge=none",
                        "--iptables=false",
                        "--ip-masq=false",
                        f"--storage-driver={driver}",
                        f"--data-root={self.dir / 'data'}",
                        f"--exec-root={self.dir / 'exec'}",
                        f"--pidfile={self.dir / 'dockerd.pid'}",
                        f"--host={self.host}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(timeout=60):
                self.storage_driver = driver
                return
            self._stop_daemon()
            remove_tree(self.dir / "data")
        raise EngineError(f"dockerd did not start with overlay2 or vfs; its log: {self.log_path}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            probe = subprocess.run(
                ["docker", "version", "--format", "{{.Server.Version}}"],
                env=self.env,
                capture_output=True,
            )
            if probe.returncode == 0:
                return True
            time.sleep(0.5)
        return False

    def _stop_daemon(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def stop(self) -> None:
        """Removes every container, stops dockerd (and its containerd), deletes its files."""
        if self._proc is not None and self._proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        self._stop_daemon()
        remove_tree(self.dir)

    def docker(
        self, *args: str | Path, check: bool = True, timeout: float = 600, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["docker", *map(str, args)]
        if check:
            return run(cmd, env=self.env, timeout=timeout, stdin=stdin)
        return subprocess.run(
            cmd, env=self.env, input=stdin, capture_output=True, text=True, timeout=timeout
        )

    def __enter__(self) -> Engine:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the images -----------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    base: str
    service: str
    train: str | None  # None when only the service image was built


def build_images(engine: Engine, tag: str, train: bool = True) -> Images:
    """Imports the debootstrap base and builds deploy/Dockerfile on it offline: the
    service image as `tag` and, with `train`, the train image as `tag`-train."""
    tarball = base_tarball()
    base = f"{tag}-base:{tarball.stem}"
    engine.docker("import", "--change", 'CMD ["python3"]', tarball, base)
    python = engine.docker(
        "run", "--rm", "--network", "none", base, "python3", "-c",
        "import sys; print('%d.%d' % sys.version_info[:2])",
    ).stdout.strip()  # fmt: skip
    host_python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if python != host_python:
        raise EngineError(
            f"the base has Python {python}, this venv {host_python}: pip downloads wheels for "
            "the host's Python, so build the venv with the Python of the apt release"
        )
    build: list[str | Path] = ["build", "--network", "none", "-f", DOCKERFILE]
    build += ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", "PIP_NO_INDEX=1"]
    with staged_wheels(wheels()):
        started = time.monotonic()
        if train:
            engine.docker(*build, "--target", "train", "-t", f"{tag}-train", ROOT)
        built_train = time.monotonic()
        # With the train image built first, every stage but the last two is cached by now.
        engine.docker(*build, "-t", tag, ROOT)
        built = time.monotonic()
    what = f"train target {built_train - started:.0f} s, then " if train else ""
    print(
        f"\nbuilt on {engine.storage_driver} in {engine.dir}: "
        f"{what}the service image {built - built_train:.0f} s"
    )
    return Images(base=base, service=tag, train=f"{tag}-train" if train else None)
