"""The warm clients of a long-lived process (pool.StorePool, the node
agent's and the CI server's), against moto's server: a client being made
holds up no other fetch's warm client, and a job that cycles AWS_REGION
evicts no warm client (issue 23, item 7)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import aws_config

from nomad_secrets.core import config as config_module
from nomad_secrets.core.request import Identity, JobOptions
from nomad_secrets.stores import pool as pool_module
from nomad_secrets.stores.pool import StorePool
from nomad_secrets.stores.registry import Backend, open_backend

IDENTITY = Identity(namespace="default", job_id="web")


def provider(moto_endpoint: str) -> config_module.Provider:
    return config_module.parse(aws_config(moto_endpoint).encode(), "t.toml").provider("aws")


def warm(pool: StorePool, moto_endpoint: str, region: str | None = None) -> Backend | None:
    return pool.backend("aws-sm", provider(moto_endpoint), 8, JobOptions(region=region), IDENTITY)


def test_a_client_being_made_holds_up_no_warm_client(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making a client resolves credentials, which can take seconds (an
    instance profile's). A TEST DOUBLE stands for that wait: the making of
    one region's client is held until the test lets it go; meanwhile
    another fetch gets its warm client, and a third fetch of the held
    region waits for the one being made instead of making a second."""
    pool = StorePool()
    ours = warm(pool, moto_endpoint)
    made: list[str | None] = []
    entered, release = threading.Event(), threading.Event()

    def slow_credentials(store: str, prov: Any, options: JobOptions, *args: Any) -> Backend:
        made.append(options.region)
        if options.region == "eu-west-1":
            entered.set()
            assert release.wait(30)
        return open_backend(store, prov, options, *args)

    monkeypatch.setattr(pool_module, "open_backend", slow_credentials)
    got: list[Backend | None] = []
    makers = [
        threading.Thread(target=lambda: got.append(warm(pool, moto_endpoint, "eu-west-1"))) for _ in range(2)
    ]
    makers[0].start()
    assert entered.wait(30)
    makers[1].start()
    try:
        # The pool's lock is free while eu-west-1's client is made.
        assert warm(pool, moto_endpoint) is ours
        assert warm(pool, moto_endpoint, "us-east-2") is ours  # the config's region, named by the job
    finally:
        release.set()
        for maker in makers:
            maker.join()
    assert made == ["eu-west-1"]  # made once; the second asker waited for it
    assert got[0] is got[1] and got[0] is not None


def test_a_job_cycling_regions_evicts_no_warm_client(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the bounds made small (4 warm, 2 on probation), a job that asks
    for 12 regions once each, twice over, makes its clients on probation
    and leaves the warm ones in place; a region asked for again while on
    probation joins the warm ones."""
    monkeypatch.setattr(pool_module, "MAX_CLIENTS", 4)
    monkeypatch.setattr(pool_module, "MAX_NEW", 2)
    pool = StorePool()
    ours = [warm(pool, moto_endpoint, region) for region in ("us-east-2", "us-west-2")]
    assert [warm(pool, moto_endpoint, region) for region in ("us-east-2", "us-west-2")] == ours  # warm now
    regions = ["eu-west-1", "eu-west-2", "eu-west-3", "eu-central-1", "ap-south-1", "ap-northeast-1"] * 2
    cycled = [warm(pool, moto_endpoint, region) for region in regions]
    assert len({id(client) for client in cycled}) == len(regions)  # each made anew: never kept long enough
    assert [warm(pool, moto_endpoint, region) for region in ("us-east-2", "us-west-2")] == ours
    assert len(pool) == 4  # 2 warm, 2 on probation

    again = warm(pool, moto_endpoint, "sa-east-1")
    assert warm(pool, moto_endpoint, "sa-east-1") is again  # asked for twice: warm
    for region in regions:
        warm(pool, moto_endpoint, region)
    assert warm(pool, moto_endpoint, "sa-east-1") is again
    assert [warm(pool, moto_endpoint, region) for region in ("us-east-2", "us-west-2")] == ours
