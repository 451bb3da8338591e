"""A job on a two-node Ray cluster: decoders and writers on one node, SAN replicas on the other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import ray
from ray.cluster_utils import Cluster

from actors.job import Placement, run_job
from pipeline.jobs.spec import parse_job_spec


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"decode_node": 4}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, resources={"model_node": 4})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace="sanstream-cluster-test", logging_level="WARNING")
    yield cluster
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


def test_decoders_and_replicas_run_on_different_nodes(
    two_nodes: Cluster, videos: dict[str, Path], tmp_path: Path
) -> None:
    spec = parse_job_spec(
        {
            "job_id": "cluster-job",
            "model": {"name": "san_tiny_test", "weights": "random"},
            "output": str(tmp_path),
            "streams": [
                {
                    "id": "street",
                    "source": str(videos["street"]),
                    "vocabulary": ["road", "car"],
                    "sampling": {"fps": 2},
                },
                {
                    "id": "river",
                    "source": str(videos["river"]),
                    "vocabulary": ["water", "grass"],
                    "sampling": {"fps": 2},
                },
            ],
        }
    )
    placement = Placement(decoders={"decode_node": 0.1}, replicas={"model_node": 1})
    outcome = run_job(spec, show_progress=False, placement=placement, commit_interval_s=0.5)
    assert outcome.status == "completed"
    nodes = {node["NodeID"]: node["Resources"] for node in ray.nodes() if node["Alive"]}
    for stream in outcome.streams.values():
        assert stream.status == "completed"
        assert "decode_node" in nodes[stream.node_id]
        assert stream.replica_nodes and all("model_node" in nodes[n] for n in stream.replica_nodes)
        assert stream.node_id not in stream.replica_nodes
    counts = duckdb.sql(
        f"SELECT stream_id, count(DISTINCT frame_index) FROM read_parquet('{tmp_path}/class_areas/**/*.parquet') GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert counts == [("river", 4), ("street", 6)]
