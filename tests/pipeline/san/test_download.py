"""The released-weights path end to end: hub download into the HF cache, checksum, offline error.

A local HTTP server on 127.0.0.1 plays the Hugging Face hub (the same resolve URLs and headers), and a
preset pointing at it stands in for a released model, so the real `huggingface_hub` download code runs.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from pipeline.san import CheckpointMismatchError, WeightsNotAvailableError, load_checkpoint
from pipeline.san import config as san_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.requests: list[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _headers(self) -> bool:
                hub.requests.append(f"{self.command} {self.path}")
                if not self.path.endswith("/resolve/main/san_tiny_test.pth"):
                    self.send_error(404)
                    return False
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(hub.payload).hexdigest()}"')
                self.send_header("Content-Length", str(len(hub.payload)))
                self.end_headers()
                return True

            def do_HEAD(self) -> None:
                self._headers()

            def do_GET(self) -> None:
                if self._headers():
                    self.wfile.write(hub.payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def released_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[bytes, Path]]:
    """A preset folder where san_tiny_test has 'released' weights, and isolated caches."""
    source = load_checkpoint("random", model="san_tiny_test", seed=11)
    checkpoint = tmp_path / "upload.pth"
    torch.save({"model": source.state_dict(), "iteration": 1}, checkpoint)
    payload = checkpoint.read_bytes()
    presets = tmp_path / "presets"
    presets.mkdir()
    for name in san_config.available_models():
        (presets / f"{name}.json").write_text(san_config.PRESETS.joinpath(f"{name}.json").read_text())
    tiny = json.loads((presets / "san_tiny_test.json").read_text())
    tiny["weights"] = {
        "hub_repo": "sanstream-test/san",
        "filename": "san_tiny_test.pth",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size_bytes": len(payload),
    }
    (presets / "san_tiny_test.json").write_text(json.dumps(tiny))
    monkeypatch.setattr(san_config, "PRESETS", presets)
    # huggingface_hub reads its cache location at import time; point the live constant at a temp folder.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("SANSTREAM_CACHE", str(tmp_path / "sanstream-cache"))
    monkeypatch.delenv("SANSTREAM_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield payload, tmp_path


def test_released_name_downloads_into_the_hf_cache_and_loads(
    released_tiny: tuple[bytes, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, tmp_path = released_tiny
    hub = FakeHub(payload)
    try:
        monkeypatch.setenv("SANSTREAM_HF_ENDPOINT", hub.url)
        model = load_checkpoint("san_tiny_test")
    finally:
        hub.close()
    expected = load_checkpoint("random", model="san_tiny_test", seed=11)
    assert torch.equal(model.clip_rec_head.proj, expected.clip_rec_head.proj)
    assert any(r.startswith("GET /sanstream-test/san/resolve/main/san_tiny_test.pth") for r in hub.requests)
    cached = list((tmp_path / "hf" / "hub").rglob("san_tiny_test.pth"))
    assert cached, "the file should land in the standard Hugging Face cache"


def test_corrupted_download_fails_the_checksum(
    released_tiny: tuple[bytes, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, _ = released_tiny
    damaged = bytearray(payload)
    damaged[len(damaged) // 2] ^= 0xFF
    hub = FakeHub(bytes(damaged))
    try:
        monkeypatch.setenv("SANSTREAM_HF_ENDPOINT", hub.url)
        with pytest.raises(CheckpointMismatchError, match="sha256"):
            load_checkpoint("san_tiny_test")
    finally:
        hub.close()


def test_offline_error_says_what_to_download_and_where(
    released_tiny: tuple[bytes, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANSTREAM_HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(WeightsNotAvailableError) as info:
        load_checkpoint("san_tiny_test")
    message = str(info.value)
    assert "san_tiny_test.pth" in message and "--weights" in message and "SANSTREAM_WEIGHTS_DIR" in message


def test_weights_dir_is_used_before_the_hub(
    released_tiny: tuple[bytes, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, tmp_path = released_tiny
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "san_tiny_test.pth").write_bytes(payload)
    monkeypatch.setenv("SANSTREAM_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("SANSTREAM_HF_ENDPOINT", "http://127.0.0.1:9")
    model = load_checkpoint("san_tiny_test")
    assert model.config.name == "san_tiny_test"
