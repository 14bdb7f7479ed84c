"""Config dataclasses become flags; the serve flags also read ACTIONSTREAM_* variables."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from actionstream.dataclass_args import add_arguments, from_args


@dataclass(frozen=True)
class _Cfg:
    port: int = field(default=50051, metadata={"help": "port"})
    model: str | None = None
    ratio: float = 0.5
    verbose: bool = False
    sizes: tuple[int, ...] = (1, 2)


def _parse(argv: list[str]) -> _Cfg:
    parser = argparse.ArgumentParser()
    add_arguments(parser, _Cfg, env_prefix="TESTAS_")
    return from_args(_Cfg, parser.parse_args(argv))


def test_defaults_flags_and_types() -> None:
    assert _parse([]) == _Cfg()
    cfg = _parse(["--port", "7", "--model", "m.onnx", "--verbose", "true", "--sizes", "3,4,5"])
    assert cfg == _Cfg(port=7, model="m.onnx", verbose=True, sizes=(3, 4, 5))


def test_environment_gives_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESTAS_PORT", "6000")
    monkeypatch.setenv("TESTAS_RATIO", "0.25")
    assert _parse([]) == _Cfg(port=6000, ratio=0.25)
    assert _parse(["--port", "1"]).port == 1


def test_bad_values_are_rejected_with_the_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parse(["--port", "eighty"])
    assert "--port" in capsys.readouterr().err
    monkeypatch.setenv("TESTAS_PORT", "eighty")
    with pytest.raises(SystemExit):
        _parse([])
    assert "TESTAS_PORT" in capsys.readouterr().err
