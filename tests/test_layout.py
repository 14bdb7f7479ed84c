"""The package's shape: one import name, and imports that only point the allowed way.

`service` never imports training or torch (the service image has neither);
`training` never imports the service, but for the module that loads a model as the
server does (export's parity check runs through it); the model contract imports neither
torch nor onnxruntime; nothing imports the repository folders by their bare
names, which exist only in a checkout.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _under(names: set[str], *prefixes: str) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


# Export checks the model it writes by loading and stepping it as the server does; that
# module needs no gRPC, no server and no training, so the two stay apart otherwise.
EXCEPTIONS = {"training": {"actionstream.service.inference.model"}}


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("service", ("torch", "actionstream.training", "training", "service")),
        # Inside the service: inference knows no gRPC call, and the clients share
        # nothing with the server but the config, the trailers and the credentials.
        ("service/inference", ("grpc", "actionstream.service.endpoint")),
        ("service/sources", ("grpc", "actionstream.service.endpoint")),
        (
            "service/clients",
            ("actionstream.service.endpoint", "actionstream.service.inference"),
        ),
        ("service/telemetry", ("grpc", "actionstream.service.endpoint")),
        ("training", ("actionstream.service", "service", "training")),
        ("actionstream", ("service", "training")),
        ("tests", ("service", "training")),
        ("bench", ("service", "training")),
    ],
)
def test_imports_point_the_allowed_way(folder: str, forbidden: tuple[str, ...]) -> None:
    assert _files(folder), folder
    allowed = EXCEPTIONS.get(folder, set())
    bad = {
        str(path.relative_to(ROOT)): sorted(hits)
        for path in _files(folder)
        if "v1" not in path.parts and (hits := _under(_imports(path), *forbidden) - allowed)
    }
    assert bad == {}


def test_the_contract_needs_no_runtime() -> None:
    for name in ("contract.py", "settings.py", "resampling.py", "frame_labels.py"):
        hits = _under(_imports(ROOT / "actionstream" / name), "torch", "onnxruntime", "onnx")
        assert hits == set(), name
        assert _under(_imports(ROOT / "actionstream" / name), "actionstream") <= {
            "actionstream.settings"
        }


def test_importing_the_service_loads_no_torch_and_no_training() -> None:
    modules = [
        ".".join(p.relative_to(ROOT / "service").with_suffix("").parts)
        for p in _files("service")
        if p.stem != "__init__"
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('actionstream.service.' + m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
        "or m.startswith('actionstream.training'))\n"
        "sys.exit(', '.join(bad) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_installed_it_adds_one_name_and_serves_from_it(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert sorted(p.name for p in target.iterdir()) == [
        "actionstream",
        "actionstream-0.1.0.dist-info",
        "bin",
    ]
    assert [p.name for p in (target / "bin").iterdir()] == ["actionstream"]

    # Run from outside the checkout with only the installed copy on the path: the
    # bare folder names are gone, and the server starts from the packaged model.
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import importlib.util, actionstream, actionstream.service.inference.model as m\n"
        "print(actionstream.__file__)\n"
        "print(importlib.util.find_spec('service'), importlib.util.find_spec('training'))\n"
        "print(m.bundled_model_path())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    package, specs, model = done.stdout.splitlines()
    assert package.startswith(str(target)) and model.startswith(str(target))
    assert specs == "None None"

    ready = tmp_path / "ready.json"
    serve = [sys.executable, "-m", "actionstream", "serve", "--host", "127.0.0.1", "--port", "0"]
    serve += ["--metrics-port", "-1", "--ready-file", str(ready)]
    with subprocess.Popen(serve, cwd=tmp_path, env=env, stderr=subprocess.PIPE) as proc:
        try:
            deadline = time.monotonic() + 60
            while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert ready.exists(), proc.stderr.read() if proc.stderr else ""
            port = json.loads(ready.read_text())["port"]
            health = subprocess.run(
                [str(target / "bin" / "actionstream"), "health", "--port", str(port)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert health.returncode == 0 and "SERVING" in health.stdout, health.stderr
        finally:
            proc.terminate()
            assert proc.wait(timeout=15) == 0


def test_the_command_line_loads_no_heavy_library_until_a_command_needs_it() -> None:
    # `actionstream health` runs every 30 s in the container: it must stay cheap.
    code = (
        "import sys, actionstream.cli\n"
        "heavy = [m for m in ('cv2', 'numpy', 'onnxruntime', 'torch') if m in sys.modules]\n"
        "sys.exit(', '.join(heavy) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_clients_load_nothing_of_the_server() -> None:
    # Not even through a module they share with it: `stream` and `watch` run where no
    # server does, and must not pull in its model runtime or its metrics.
    code = (
        "import importlib, sys\n"
        "for m in ('stream', 'watch', 'health'):\n"
        "    importlib.import_module('actionstream.service.clients.' + m)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('actionstream.service.endpoint', "
        "'actionstream.service.inference', 'actionstream.service.telemetry', 'onnxruntime', "
        "'prometheus_client')))\n"
        "sys.exit(', '.join(bad) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
