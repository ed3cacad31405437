"""The console script: help, subcommand discovery, one-line errors, and docs that match it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pspnet.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in _subcommands():
        assert name in out


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in sorted(_subcommands()):
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0, name
        assert "usage: pspnet " + name in capsys.readouterr().out


def test_readme_command_table_matches_the_cli() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`pspnet ([a-z][a-z-]*)", readme))
    assert {"demo", "models", "convert"} <= documented
    assert documented <= _subcommands(), documented - _subcommands()


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: pspnet" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["pspnet.cli", "pspnet"])
def test_console_script_entry_point_runs_as_module(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "models", "fcn_*"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "fcn_tiny" in result.stdout


def test_user_error_is_one_line_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pspnet.cli", "convert", "does-not-exist.pth", "out.safetensors"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "does-not-exist.pth" in result.stderr


def test_under_torchrun_a_shared_config_error_is_printed_by_rank_0_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rank reads the same config; one message, from rank 0, and the same status everywhere.
    An error of one rank alone (here: a missing file, not marked as shared) is still printed."""
    bad = ["train", "--config", "demo", "--set", "optim.amp=fp8"]
    monkeypatch.setenv("RANK", "1")
    assert main(bad) == 2
    assert capsys.readouterr().err == ""
    assert main(["convert", "does-not-exist.pth", "out.safetensors"]) == 2
    assert "does-not-exist.pth" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    assert main(bad) == 2
    assert capsys.readouterr().err.count("optim.amp") == 1
