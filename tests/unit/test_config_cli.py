"""Configuration layering (defaults < TOML < flags) and the command line's front door."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ptychoflow.cli import build_parser, main
from ptychoflow.config import ConfigError, resolve
from ptychoflow.sim.cli import SimSettings


def _args(argv: list[str]):  # noqa: ANN202
    return build_parser().parse_args(argv)


def test_toml_overrides_defaults_and_flags_override_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('[sim]\nprefix = "BL26:"\nframes = 100\nrate = 5.0\n')
    s = resolve(SimSettings, "sim", _args(["sim", "--config", str(cfg), "--frames", "7"]))
    assert (s.prefix, s.frames, s.rate, s.size) == ("BL26:", 7, 5.0, 128)


def test_config_after_the_subcommand_or_before_it(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('[sim]\nframes = 11\n')
    for argv in (["--config", str(cfg), "sim"], ["sim", "--config", str(cfg)]):
        assert resolve(SimSettings, "sim", _args(argv)).frames == 11


def test_unknown_key_names_the_known_ones(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('[sim]\nframs = 100\n')
    with pytest.raises(ConfigError, match="unknown key.*frams.*known keys"):
        resolve(SimSettings, "sim", _args(["sim", "--config", str(cfg)]))


def test_bad_values_and_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="frames must be at least 1"):
        resolve(SimSettings, "sim", _args(["sim", "--frames", "0"]))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(SimSettings, "sim", _args(["sim", "--config", str(tmp_path / "nope.toml")]))
    bad = tmp_path / "bad.toml"
    bad.write_text("[sim\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(SimSettings, "sim", _args(["sim", "--config", str(bad)]))


def test_main_reports_config_errors_with_exit_2(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert main(["sim", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "configuration error" in capsys.readouterr().err


def test_every_subcommand_has_help() -> None:
    out = subprocess.run([sys.executable, "-m", "ptychoflow.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    commands = [c for c in ("sim", "ioc", "edge", "remote", "demo", "bench") if c in out]
    assert "sim" in commands and "bench" in commands
    for c in commands:
        r = subprocess.run([sys.executable, "-m", "ptychoflow.cli", c, "--help"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "usage: ptychoflow" in r.stdout, (c, r.stderr)
