"""The names of the model's compile modes, without torch: job specs, the service's settings and the CLI
check them before anything loads the model stack (`pipeline.san.compiled` runs them)."""

from __future__ import annotations

#: torch.compile's modes ("reduce-overhead" adds CUDA graphs) plus "trace": dynamo traces the forward as one
#: graph and runs it without code generation (checks in seconds, on any machine, that the model compiles).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "trace")


def compile_mode_problem(mode: object) -> str | None:
    """Why `mode` is not a compile mode (None, meaning eager, is one), or None when it is."""
    if mode is None or mode in COMPILE_MODES:
        return None
    return f"must be one of {', '.join(COMPILE_MODES)} or null (no compilation), got {mode!r}"
