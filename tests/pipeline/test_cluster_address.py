"""`--address` is checked with a plain TCP connect before Ray is imported (`pipeline.cluster_address`)."""

from __future__ import annotations

import socket

import pytest

from pipeline.cluster_address import ClusterAddressError, check_cluster_address, head_endpoint


@pytest.mark.parametrize(
    ("address", "endpoint"),
    [
        ("10.0.0.5:6380", ("10.0.0.5", 6380)),
        ("head-node", ("head-node", 6379)),
        ("ray://head-node", ("head-node", 10001)),
        ("ray://10.0.0.5:10002", ("10.0.0.5", 10002)),
        ("[::1]:6379", ("::1", 6379)),
        ("auto", None),
        ("local", None),
        ("http://head-node:8265", None),  # not ray.init's: Ray says so itself
    ],
)
def test_address_forms(address: str, endpoint: tuple[str, int] | None) -> None:
    assert head_endpoint(address) == endpoint


@pytest.mark.parametrize("address", ["head:port", "ray://:10001", "[::1:6379"])
def test_malformed_addresses_are_named(address: str) -> None:
    with pytest.raises(ClusterAddressError, match="is not a Ray address"):
        head_endpoint(address)


def test_a_listening_head_passes_and_a_closed_port_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        check_cluster_address(f"127.0.0.1:{port}")
        check_cluster_address(f"ray://127.0.0.1:{port}")
    with pytest.raises(ClusterAddressError) as refused:
        check_cluster_address(f"127.0.0.1:{port}")
    assert str(refused.value) == (
        f"no Ray cluster at 127.0.0.1:{port} (connection refused); leave out --address to run locally"
    )
    check_cluster_address(None)  # a local Ray: nothing to check
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ClusterAddressError, match=r"\$RAY_ADDRESS's\); unset RAY_ADDRESS to run locally"):
        check_cluster_address(None)
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    check_cluster_address(None)  # Ray's own lookup


def test_an_unknown_host_is_named() -> None:
    with pytest.raises(ClusterAddressError, match=r"cannot resolve host 'no-such-host\.invalid'"):
        check_cluster_address("no-such-host.invalid:6379", timeout_s=2)
