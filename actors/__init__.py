"""Ray actors and Serve deployments that wrap the Ray-free pieces of `pipeline/`."""
