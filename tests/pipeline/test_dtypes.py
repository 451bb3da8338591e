"""Precision names: every command takes the short and the long spelling and stores the canonical one."""

from __future__ import annotations

import pytest
import torch

from pipeline.cli.main import build_parser
from pipeline.dtypes import canonical_dtype, torch_dtype

SPELLINGS = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "BF16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
#: The argv of each command that takes --dtype, without the flag.
COMMANDS = {
    "run": ["run", "clip.mp4", "--vocab", "sky"],
    "demo": ["demo"],
    "segment": ["segment", "street.png", "--vocab", "car"],
    "serve": ["serve"],
}


@pytest.mark.parametrize(("given", "expected"), SPELLINGS.items())
def test_both_spellings_map_to_the_canonical_name(given: str, expected: str) -> None:
    assert canonical_dtype(given) == expected


@pytest.mark.parametrize("name", ["float64", "half", "", "int8"])
def test_an_unknown_name_lists_the_accepted_ones(name: str) -> None:
    with pytest.raises(ValueError, match=r"bfloat16.*bf16"):
        canonical_dtype(name)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("given", "expected"), [("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("fp32", "float32")]
)
def test_every_command_accepts_both_spellings(command: str, given: str, expected: str) -> None:
    args = build_parser().parse_args([*COMMANDS[command], "--dtype", given])
    assert args.dtype == expected


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_rejects_an_unknown_dtype_as_a_usage_error(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*COMMANDS[command], "--dtype", "float64"])
    assert exit_info.value.code == 2
    assert "unknown dtype 'float64'" in capsys.readouterr().err


def test_help_lists_the_canonical_names(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "--help"])
    assert "{auto,float32,bfloat16,float16}" in capsys.readouterr().out


def test_torch_dtypes_and_auto_by_device() -> None:
    assert torch_dtype("bf16") is torch.bfloat16
    assert torch_dtype("float16") is torch.float16
    assert torch_dtype("auto", "cuda") is torch.bfloat16
    assert torch_dtype("auto", "cpu") is torch.float32


def test_run_stores_the_canonical_name_in_the_job_spec(tmp_path) -> None:
    from pipeline.cli.run import spec_from_args

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"")  # the spec checks that a local source exists, not what it holds
    args = build_parser().parse_args(
        ["run", str(clip), "--vocab", "sky", "--dtype", "bf16", "--out", str(tmp_path)]
    )
    assert spec_from_args(args).model.dtype == "bfloat16"
