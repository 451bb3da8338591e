"""Is there a Ray cluster at `--address`? A plain TCP connect, answered in seconds, without Ray.

`ray.init` given an address where nothing listens does not fail: it retries the GCS for minutes, printing
only Ray's own warnings. One TCP connection with a short timeout tells "nothing there" (refused, no answer,
unknown host) apart from "something listens" before Ray is even imported; whether what listens is really
Ray is left to Ray. `auto` (find the cluster `ray start` left on this machine) and `local` are Ray's own
business too, as is any form this module does not know (Ray reports those itself, quickly).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

#: Seconds to wait for the TCP handshake with the cluster's head.
CONNECT_TIMEOUT_S = 3.0
#: Default ports: the GCS for `host`, Ray Client's server for `ray://host`.
GCS_PORT = 6379
CLIENT_PORT = 10001
RAY_ADDRESS_ENV = "RAY_ADDRESS"


class ClusterAddressError(ValueError):
    """No Ray cluster answers at the address given (or the address cannot be one)."""


def head_endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) to connect to for `address` (`host:port`, `host`, `ray://host[:port]`, IPv6 in
    brackets), or None for the forms Ray resolves itself (`auto`, `local`, other schemes)."""
    text = address.strip()
    if not text or text in ("auto", "local"):
        return None
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme != "ray":
            return None
        default = CLIENT_PORT
    else:
        default = GCS_PORT
        text = f"//{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:  # a port that is not a number, an unclosed bracket
        raise ClusterAddressError(f"{address!r} is not a Ray address ({error}); give HOST:PORT") from None
    if not parts.hostname:
        raise ClusterAddressError(f"{address!r} is not a Ray address: no host; give HOST:PORT")
    return parts.hostname, port or default


def cluster_target(address: str | None) -> str | None:
    """The Ray cluster a command joins: `address`, else $RAY_ADDRESS (as `ray job submit` sets it); None
    means a Ray of its own on this machine."""
    return address or os.environ.get(RAY_ADDRESS_ENV) or None


def check_cluster_address(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise `ClusterAddressError` when `address` (else $RAY_ADDRESS) names a host:port where no Ray head
    answers; no address means a local Ray, nothing to check."""
    from_env = not address
    given = cluster_target(address) or ""
    endpoint = head_endpoint(given)
    if endpoint is None:
        return
    host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except TimeoutError:
        why = f"no answer within {timeout_s:g} s"
    except socket.gaierror as error:
        why = f"cannot resolve host {host!r}: {error.strerror or error}"
    except ConnectionRefusedError:
        why = "connection refused"
    except OSError as error:
        why = (error.strerror or str(error)).lower()
    if from_env:
        why, fix = f"{why}; the address is ${RAY_ADDRESS_ENV}'s", f"unset {RAY_ADDRESS_ENV}"
    else:
        fix = "leave out --address"
    raise ClusterAddressError(f"no Ray cluster at {given} ({why}); {fix} to run locally")
