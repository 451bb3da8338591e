"""The one-driver-per-job lease against a real redis-server: acquire, renew, release, expiry on Redis'
clock, tokens that only grow, one winner among racing drivers, and the fast take-over of a dead driver on
this host (by pid, and by a reused pid)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time

import pytest
import redis

from pipeline.jobs.lease import (
    LEASE_TOKEN_FIELD,
    Holder,
    JobLease,
    LeaseHeldError,
    lease_info,
    lease_key,
)
from pipeline.jobs.state import JobStore

JOB = "job-lease"


def other_holder(pid: int = 1, host: str = "elsewhere.example") -> Holder:
    return Holder(host, pid, "")


def here(pid: int, started: str = "") -> Holder:
    """A holder on this host, in this pid namespace."""
    return dataclasses.replace(Holder.this_process(), pid=pid, started=started)


def dead_pid() -> int:
    """The pid of a process of ours that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_acquire_renew_release(redis_client: redis.Redis) -> None:
    lease = JobLease(redis_client, JOB, ttl_s=5)
    token = lease.acquire()
    assert token == 1
    info = lease_info(redis_client, JOB)
    assert info is not None
    assert (info.holder, info.token) == (Holder.this_process(), 1)
    assert 0 < info.ttl_s <= 5
    redis_client.pexpire(lease_key(JOB), 500)
    assert lease.renew()
    assert lease_info(redis_client, JOB).ttl_s > 1  # renewed back to the full TTL
    lease.release()
    assert lease_info(redis_client, JOB) is None
    assert not lease.lost.is_set()


def test_second_holder_is_refused_with_the_holder_named(redis_client: redis.Redis) -> None:
    first = JobLease(redis_client, JOB, holder=other_holder(4242, "gpu-node-7"))
    first.acquire()
    second = JobLease(redis_client, JOB)
    with pytest.raises(LeaseHeldError) as refused:
        second.acquire()
    message = str(refused.value)
    assert "pid 4242 on host gpu-node-7" in message and "lease token 1" in message
    assert f"sanstream cancel {JOB}" in message
    assert lease_info(redis_client, JOB).holder == other_holder(4242, "gpu-node-7")  # untouched


def test_expiry_frees_the_lease_and_tokens_only_grow(redis_client: redis.Redis) -> None:
    gone = JobLease(redis_client, JOB, holder=other_holder(), ttl_s=0.2)
    assert gone.acquire() == 1
    time.sleep(0.4)  # expires on Redis' clock; no renewal
    assert lease_info(redis_client, JOB) is None
    successor = JobLease(redis_client, JOB, ttl_s=5)
    assert successor.acquire() == 2
    # The old holder comes back: its renewal must fail, not steal the lease back.
    assert not gone.renew()
    assert gone.lost.is_set()
    successor.release()
    assert JobLease(redis_client, JOB).acquire() == 3
    assert int(redis_client.get(f"{lease_key(JOB)}:tokens")) == 3


def test_renewal_takes_back_an_expired_lease_nobody_took(redis_client: redis.Redis) -> None:
    lease = JobLease(redis_client, JOB, ttl_s=0.2)
    lease.acquire()
    time.sleep(0.4)
    assert lease_info(redis_client, JOB) is None
    assert lease.renew()  # no other driver acquired since (the token counter says so): safe to keep
    assert lease_info(redis_client, JOB).token == lease.token
    assert not lease.lost.is_set()


def test_only_one_of_racing_drivers_wins(redis_client: redis.Redis, redis_server) -> None:
    winners: list[int] = []
    refused: list[str] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        client = redis_server.client(decode_responses=True)
        lease = JobLease(client, JOB, holder=other_holder(1000 + i))
        barrier.wait()
        try:
            winners.append(lease.acquire())
        except LeaseHeldError as error:
            refused.append(str(error))
        finally:
            client.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(refused) == 7
    assert lease_info(redis_client, JOB).token == winners[0]


def test_dead_driver_on_this_host_is_taken_over_at_once(redis_client: redis.Redis) -> None:
    dead = here(dead_pid())
    JobLease(redis_client, JOB, holder=dead, ttl_s=60).acquire()
    lease = JobLease(redis_client, JOB)
    assert lease.acquire() == 2  # no waiting for the 60 s TTL
    assert lease_info(redis_client, JOB).holder == Holder.this_process()


def test_reused_pid_counts_as_dead(redis_client: redis.Redis) -> None:
    me = Holder.this_process()
    assert me.started, "process start times are read from /proc"
    impostor = here(me.pid, str(int(me.started) - 1))  # same pid, another process
    assert impostor.is_dead_here() and not me.is_dead_here()
    JobLease(redis_client, JOB, holder=impostor, ttl_s=60).acquire()
    assert JobLease(redis_client, JOB).acquire() == 2


def test_live_or_remote_holders_are_not_taken_over(redis_client: redis.Redis) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = here(sleeper.pid)
        JobLease(redis_client, JOB, holder=live, ttl_s=60).acquire()
        with pytest.raises(LeaseHeldError):
            JobLease(redis_client, JOB).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    redis_client.delete(lease_key(JOB))
    # A holder on another host, or in another pid namespace of this one (a container with the host's
    # name), with a pid that is dead here: it is not ours to judge, the TTL decides.
    for holder in (other_holder(dead_pid()), dataclasses.replace(here(dead_pid()), pid_namespace="1")):
        redis_client.delete(lease_key(JOB))
        JobLease(redis_client, JOB, holder=holder, ttl_s=60).acquire()
        with pytest.raises(LeaseHeldError):
            JobLease(redis_client, JOB).acquire()


def test_take_over_never_breaks_a_lease_taken_in_between(redis_client: redis.Redis) -> None:
    """The take-over is a compare-and-swap on the value observed: once a live driver replaced the dead
    one, breaking "the dead driver's lease" must fail."""
    dead = here(dead_pid())
    stale = JobLease(redis_client, JOB, holder=dead, ttl_s=60)
    stale.acquire()
    observed = stale.value
    redis_client.delete(lease_key(JOB))
    JobLease(redis_client, JOB, holder=other_holder(7)).acquire()  # the live driver that got in first
    late = JobLease(redis_client, JOB)
    ok, current = late._acquire(keys=[late.key, late.tokens_key], args=[str(late.holder), 5000, observed])
    assert not ok and current.endswith(str(other_holder(7)))


def test_renewal_thread_keeps_it_and_notices_a_loss(redis_client: redis.Redis) -> None:
    lease = JobLease(redis_client, JOB, ttl_s=0.6, renew_every_s=0.1)
    lease.acquire()
    lease.start_renewing()
    try:
        time.sleep(1.2)  # twice the TTL: only renewals keep it
        assert lease_info(redis_client, JOB).token == lease.token
        redis_client.set(lease_key(JOB), f"99 {other_holder()}", px=5000)  # another driver took over
        deadline = time.monotonic() + 2
        while not lease.lost.is_set():
            assert time.monotonic() < deadline, "the renewal thread did not notice the loss"
            time.sleep(0.02)
    finally:
        lease.release()
    assert lease_info(redis_client, JOB).token == 99  # release never deletes another holder's lease


def test_token_is_published_on_the_job_hash(store: JobStore, redis_client: redis.Redis) -> None:
    lease = JobLease(redis_client, JOB)
    lease.acquire()
    assert not lease.publish()  # no job yet: nothing to write on
    store.create_job(JOB, {"output": "/tmp/out"}, ["cam"])
    assert lease.publish()
    assert redis_client.hget(f"sanstream:job:{JOB}", LEASE_TOKEN_FIELD) == str(lease.token)
    lease.release()


def test_holder_text_round_trips() -> None:
    me = Holder.this_process()
    assert Holder.parse(str(me)) == me
    assert me.pid_namespace.isdigit()
    assert me.pid == os.getpid()
