"""`sanstream segment` and `sanstream weights convert` as a new user runs them: a real process, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.san import load_checkpoint
from tests.pipeline.san.conftest import pattern_image


def sanstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "120", **(env or {})},
    )


def test_segment_writes_overlays_and_prints_areas(tmp_path: Path) -> None:
    first, second = tmp_path / "street.png", tmp_path / "field.jpg"
    Image.fromarray(pattern_image(90, 120, 1)).save(first)
    Image.fromarray(pattern_image(64, 48, 2)).save(second)
    out = tmp_path / "out"
    result = sanstream(
        "segment",
        str(first),
        str(second),
        "--vocab",
        "road,car,tree",
        "--weights",
        "random",
        "--model",
        "san_tiny_test",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "random weights" in result.stdout
    for name, size in (("street_san.png", (120, 90)), ("field_san.png", (48, 64))):
        overlay = Image.open(out / name)
        assert overlay.width > size[0] and overlay.height >= size[1]  # image plus legend panel
    for word in ("road", "car", "tree", "pixels", "fraction"):
        assert word in result.stdout
    assert "10,800" in result.stdout or "100.0%" in result.stdout


def test_segment_reports_bad_inputs_clearly(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(pattern_image(32, 32, 0)).save(good)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    common = ["--weights", "random", "--model", "san_tiny_test", "--out", str(tmp_path / "o")]
    result = sanstream(
        "segment", str(good), str(tmp_path / "missing.png"), str(text), "--vocab", "a,b", *common
    )
    assert result.returncode == 1
    assert "missing.png: no such file" in result.stdout
    assert "notes.png: not a readable image" in result.stdout
    assert (tmp_path / "o" / "good_san.png").is_file()
    bad_vocab = sanstream("segment", str(good), "--vocab", "a,,b", *common)
    assert bad_vocab.returncode == 2 and "--vocab[1] is an empty class name" in bad_vocab.stderr


def test_segment_without_downloadable_weights_explains_what_to_do(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(pattern_image(16, 16, 0)).save(image)
    env = {
        "SANSTREAM_HF_ENDPOINT": "http://127.0.0.1:9",
        "SANSTREAM_CACHE": str(tmp_path / "cache"),
        "SANSTREAM_WEIGHTS_DIR": str(tmp_path / "weights"),
        "HF_HUB_CACHE": str(tmp_path / "hf"),
    }
    result = sanstream("segment", str(image), "--vocab", "a", env=env)
    assert result.returncode == 2
    assert "san_vit_b_16.pth" in result.stderr and "--weights random" in result.stderr
    assert "Traceback" not in result.stderr


def test_weights_convert_produces_a_loadable_safetensors(tmp_path: Path) -> None:
    model = load_checkpoint("random", model="san_tiny_test", seed=4)
    source = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict(), "iteration": 3}, source)
    target = tmp_path / "tiny.safetensors"
    result = sanstream("weights", "convert", str(source), str(target))
    assert result.returncode == 0, result.stderr
    loaded = load_checkpoint(target)
    assert np.array_equal(
        loaded.clip_rec_head.proj.detach().numpy(), model.clip_rec_head.proj.detach().numpy()
    )
