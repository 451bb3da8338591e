"""The wheel works on its own: built from the sources, installed (not editable) into a fresh venv, run from
a folder outside the checkout. This is how the KubeRay image installs sanstream (`pip install .`), so a
preset or data file read relative to the source tree would fail here first.

The fresh venv gets its dependencies (torch, ray, ...: gigabytes) from the project's venv through a .pth
file, so only sanstream itself is installed. The big presets are built on the meta device (their configs
resolve through the packaged data and their module trees build); random weights for san_vit_b_16 take
~5 s and san_vit_large_14 ~1.7 GB on a CI CPU, so only san_tiny_test gets real weights and runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "pipeline" / "san" / "presets"
# What a wheel is built from; everything else in the checkout (tests, configs, .venv) must not be needed.
SOURCES = ("pyproject.toml", "README.md", "pipeline", "actors")

PROBE = """
import importlib.metadata, json, sys, torch
import pipeline
from pipeline.san import SAN, available_models, get_config, load_checkpoint
from pipeline.san.config import PRESETS
names = available_models()
for name in names:
    with torch.device("meta"):
        SAN(get_config(name))
tiny = load_checkpoint("random", model="san_tiny_test")
print(json.dumps({
    "pipeline": pipeline.__file__,
    "presets": str(PRESETS),
    "models": names,
    "tiny_parameters": sum(p.numel() for p in tiny.parameters()),
    "version": importlib.metadata.version("sanstream"),
    "prefix": sys.prefix,
}))
"""


def build_wheel(tmp_path: Path) -> Path:
    """A wheel from a copy of the sources, so the build leaves nothing (build/, egg-info) in the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("sanstream-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv holding only the wheel, then pointed at the project venv's site-packages for the rest.

    The .pth is written after the install: pip must not see the project venv's editable sanstream.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python), "install",
         "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dependencies = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site) / "sanstream-test-deps.pth").write_text("\n".join(dependencies) + "\n")
    return venv


def outside_env() -> dict[str, str]:
    """The environment of a user's shell: nothing pointing Python at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "COLUMNS": "120", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("packaging")
    return fresh_venv(tmp_path, build_wheel(tmp_path))


def test_installed_wheel_loads_every_preset_from_itself(installed: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [str(installed / "bin" / "python"), "-c", PROBE],
        cwd=tmp_path,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(found["prefix"]) == installed
    assert Path(found["pipeline"]).is_relative_to(installed), found["pipeline"]
    assert Path(found["presets"]).is_relative_to(installed), found["presets"]
    assert found["models"] == sorted(p.stem for p in PRESETS.glob("*.json"))
    assert found["tiny_parameters"] > 0
    assert found["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_installed_command_prints_its_version_and_segments(installed: Path, tmp_path: Path) -> None:
    sanstream = str(installed / "bin" / "sanstream")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    printed = subprocess.run(
        [sanstream, "--version"], cwd=tmp_path, env=outside_env(), capture_output=True, text=True, timeout=60
    )
    assert printed.returncode == 0 and printed.stdout.strip() == f"sanstream {version}", printed
    image = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    segmented = subprocess.run(
        [sanstream, "segment", "street.png", "--vocab", "road,car,tree", "--weights", "random",
         "--model", "san_tiny_test", "--device", "cpu", "--out", "out"],
        cwd=tmp_path,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert segmented.returncode == 0, segmented.stderr
    assert (tmp_path / "out" / "street_san.png").is_file()
    assert "road" in segmented.stdout and "fraction" in segmented.stdout


def test_repository_path_to_the_presets_still_works() -> None:
    """`configs/models` (named in docs and older job specs) is a link to the packaged presets."""
    assert (ROOT / "configs" / "models").resolve() == PRESETS.resolve()
    assert sorted(p.name for p in (ROOT / "configs" / "models").glob("*.json")) == sorted(
        p.name for p in PRESETS.glob("*.json")
    )
