"""The long-lived service: one warm SAN pool for every job, an HTTP API, and a job manager that runs
jobs inside the cluster (`sanstream serve`)."""
