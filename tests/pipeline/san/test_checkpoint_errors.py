"""A checkpoint that almost fits is reported key by key, also when the model is inferred from the file.

One dropped key or one resized tensor must show up by name (with both shapes) against the closest preset,
not as "matches no known model"; a file that is no checkpoint at all is named as such. Checkpoints are the
tiny preset's real random weights, saved the way users save them (torch.save, safetensors).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.san import SAN, CheckpointMismatchError, convert_to_safetensors, get_config, load_checkpoint
from pipeline.san.weights import infer_model_name, read_state_dict

DROPPED = "clip_rec_head.proj"
RESIZED = "side_adapter_network.query_embed"


def tiny_state() -> dict[str, torch.Tensor]:
    return load_checkpoint("random", model="san_tiny_test", seed=5).state_dict()


def mismatch_message(path: Path) -> str:
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(path)
    return str(info.value)


def test_one_missing_key_is_named_against_the_closest_preset(tmp_path: Path) -> None:
    state = tiny_state()
    del state[DROPPED]
    path = tmp_path / "dropped.pth"
    torch.save({"model": state, "iteration": 1}, path)
    message = mismatch_message(path)
    assert str(path) in message
    assert "closest is san_tiny_test" in message
    assert f"missing (1): {DROPPED}\n" in message
    assert "unexpected" not in message and "wrong shape" not in message


def test_one_wrong_shape_is_named_with_both_shapes(tmp_path: Path) -> None:
    state = tiny_state()
    expected = tuple(state[RESIZED].shape)
    state[RESIZED] = torch.zeros(1, 3, expected[-1])
    path = tmp_path / "resized.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    message = mismatch_message(path)
    assert "closest is san_tiny_test" in message
    assert (
        f"wrong shape (1): {RESIZED} is (1, 3, {expected[-1]}) in the file, {expected} in the model"
        in message
    )
    assert "missing" not in message


def test_long_lists_are_capped_with_a_count(tmp_path: Path) -> None:
    state = tiny_state()
    dropped = [key for key in state if key.startswith("side_adapter_network.")][:12]
    for key in dropped:
        del state[key]
    state.update({f"extra.{i}": torch.zeros(1) for i in range(7)})
    path = tmp_path / "many.pth"
    torch.save(state, path)
    message = mismatch_message(path)
    assert f"missing (12): {', '.join(dropped[:5])} and 7 more" in message
    assert "unexpected (7): extra.0, extra.1, extra.2, extra.3, extra.4 and 2 more" in message
    assert dropped[5] not in message


@pytest.mark.parametrize("name", ["san_vit_b_16", "san_vit_large_14"])
def test_the_closest_of_all_presets_is_named(name: str) -> None:
    """Presets share their key names and differ in shapes; the one with most matching tensors wins."""
    with torch.device("meta"):
        state = SAN(get_config(name)).state_dict()
    del state[DROPPED]
    with pytest.raises(CheckpointMismatchError) as info:
        infer_model_name(state, "released-but-cut.pth")
    assert f"closest is {name} " in str(info.value)
    assert f"missing (1): {DROPPED}\n" in str(info.value)


def test_convert_reports_the_same_differences(tmp_path: Path) -> None:
    state = tiny_state()
    del state[DROPPED]
    source, target = tmp_path / "dropped.pth", tmp_path / "dropped.safetensors"
    torch.save(state, source)
    with pytest.raises(CheckpointMismatchError, match=f"missing \\(1\\): {DROPPED}"):
        convert_to_safetensors(source, target)
    assert not target.exists()


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"hello, these are notes\n", "is neither a PyTorch checkpoint nor a .safetensors file"),
        (b"", "is an empty file"),
        (b"\x80\x02hello there", "could not be read as a PyTorch checkpoint (KeyError"),
        (b"PK\x03\x04not really a zip", "could not be read as a PyTorch checkpoint"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path, content: bytes, phrase: str) -> None:
    """Text is refused before unpickling; bytes that look like torch.save's formats but are damaged make
    torch's unpickler raise KeyError/RuntimeError, which still becomes the one weights error."""
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointMismatchError) as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and phrase in str(info.value)
