"""The blackout-model sweep on Dask: chunks, bitwise comparison, and the same result as one process."""

import numpy as np

from tests.kernels.blackout.helpers import TRUE, random_params
from workbench.kernels.blackout.model import evaluate, random_configs
from workbench.kernels.sweep import bitwise_equal, chunk_bounds, sweep


def test_chunk_bounds_cover_every_configuration_once():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(0, 4) == []


def test_bitwise_equal_sees_one_ulp():
    single = evaluate(random_configs(100, 5), TRUE)
    nudged = single.phase_seconds.copy()
    nudged[50, 3] = np.nextafter(nudged[50, 3], np.inf)
    assert bitwise_equal(single, single._replace(phase_seconds=single.phase_seconds.copy()))
    assert not bitwise_equal(single, single._replace(phase_seconds=nudged))


def test_dask_local_cluster_matches_single_process():
    from distributed import Client, LocalCluster

    configs = random_configs(10_000, 11)
    params = random_params(11)
    single = evaluate(configs, params)
    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        assert len(client.scheduler_info()["workers"]) == 2
        by_address = sweep(configs, params, cluster.scheduler_address, chunk_size=1234)
        by_client = sweep(configs, params, client)
    assert bitwise_equal(by_address, single)
    assert bitwise_equal(by_client, single)


def test_dask_default_starts_and_closes_a_local_cluster():
    configs = random_configs(2000, 12)
    result = sweep(configs, TRUE, n_workers=2)
    assert bitwise_equal(result, evaluate(configs, TRUE))
