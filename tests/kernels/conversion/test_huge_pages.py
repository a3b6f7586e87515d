"""Huge pages set up for the huge-page strategies, on files shaped like the kernel's (the real ones are this
machine's configuration: only the lab VM's agent writes them)."""

from workbench.kernels.conversion.huge_pages import enable_shmem_thp, reserve_hugetlb_pages


def test_shmem_thp_is_turned_on_advice_only_when_it_is_off(tmp_path):
    setting = tmp_path / "shmem_enabled"
    setting.write_text("always within_size advise [never] deny force\n")
    assert enable_shmem_thp(setting) == {"before": "never", "after": "advise"}
    setting.write_text("[always] within_size advise never deny force\n")
    assert enable_shmem_thp(setting) == {"before": "always", "after": "always"}


def test_the_hugetlb_pool_grows_by_what_is_asked(tmp_path):
    pool = tmp_path / "nr_hugepages"
    pool.write_text("2\n")
    assert reserve_hugetlb_pages(5, pool) == {"before": 2, "requested": 7, "after": 7}
