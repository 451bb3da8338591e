"""A pool that does not start is reported by its replicas' own error, not Serve's "Deploying ... failed"."""

from __future__ import annotations

from actors.pool_errors import pool_start_error, root_cause

# What Serve 2.60 answered (`serve.status()`, the deployment's message) for a replica whose weights file was
# not a safetensors file, shortened where it repeats itself.
DEPLOYMENT_MESSAGE = """\
The deployment failed to start 3 times in a row. This may be due to a problem with its constructor or \
initial health check failing. See controller logs for details. Error:
Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/ray/serve/_private/replica.py", line 1928, in initialize
    raise RuntimeError(traceback.format_exc()) from None
RuntimeError: Traceback (most recent call last):
  File "/repo/pipeline/san/weights.py", line 193, in read_state_dict
    return load_file(str(path), device="cpu")
safetensors._safetensors_rust.SafetensorError: Error while deserializing header: invalid JSON in header

The above exception was the direct cause of the following exception:

\x1b[36mray::ServeReplica:sanstream-dep1:SegmentationReplica.initialize_and_get_metadata()\x1b[39m (pid=1475)
  File "/repo/actors/segmentation.py", line 66, in __init__
    san = load_checkpoint(weights, model=None if is_file else model)
  File "/repo/pipeline/san/weights.py", line 195, in read_state_dict
    raise CheckpointMismatchError(f"{path} is not a readable safetensors file ({error})") from error
pipeline.san.weights.CheckpointMismatchError: /tmp/garbage.safetensors is not a readable safetensors file \
(Error while deserializing header: invalid JSON in header)"""


def test_the_replicas_last_error_is_the_cause() -> None:
    cause = root_cause(["Failed to update the deployments ['SegmentationReplica'].", DEPLOYMENT_MESSAGE])
    assert cause == (
        "CheckpointMismatchError: /tmp/garbage.safetensors is not a readable safetensors file "
        "(Error while deserializing header: invalid JSON in header)"
    )


def test_rays_wrappers_give_way_to_what_they_wrap() -> None:
    text = (
        "ray.exceptions.RayTaskError(UnknownModelError): ray::ServeReplica.__init__() (pid=7)\n"
        "pipeline.san.config.UnknownModelError: unknown model 'nosuch'\n"
        "RuntimeError: Deploying application sanstream-x failed: see above\n"
    )
    assert root_cause([text]) == "UnknownModelError: unknown model 'nosuch'"
    assert root_cause(["RuntimeError: something Ray said"]) == "RuntimeError: something Ray said"
    assert root_cause(["no error named here"]) is None


def test_without_serve_the_first_line_of_the_error_is_kept() -> None:
    """Outside a Ray session Serve cannot be asked: the message says what `serve.run` said."""
    failure = pool_start_error(
        RuntimeError("Deploying application sanstream-j failed: Failed to update the deployments ['X']."),
        "sanstream-j",
        "j",
    )
    assert failure.job_id == "j"
    assert str(failure) == (
        "the model pool did not start: Deploying application sanstream-j failed: "
        "Failed to update the deployments ['X']."
    )
