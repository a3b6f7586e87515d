import pandas as pd

from workbench.kernels.conversion import run_conversion
from workbench.kernels.conversion_answer import answer, best_by_strategy


def test_answer_is_computed_from_a_real_run():
    frame, limits = run_conversion(
        [8 << 20], [1], strategies=["pwrite", "vmsplice-splice", "memfd-from-birth"], repeats=1, pipe_sizes=[1 << 20]
    )
    best = best_by_strategy(frame)
    assert set(best["strategy"]) == {"pwrite", "vmsplice-splice"}
    assert best["bytes_per_s"].is_monotonic_decreasing
    text = answer(frame, limits)
    top = best.iloc[0]
    assert f"{top['bytes_per_s'] / 1e9:.2f} GB/s" in text
    assert "vmsplice/splice" in text and "memfd from birth" in text


def test_numbers_follow_the_data():
    rows = [
        dict(
            strategy="pwrite",
            copier="kernel",
            size=1 << 30,
            threads=1,
            pipe_size_obtained=0,
            bytes_per_s=2e9,
            ratio_to_memcpy=0.2,
            verified=True,
            available=True,
            reason=None,
        ),
        dict(
            strategy="vmsplice-splice",
            copier="kernel",
            size=1 << 30,
            threads=1,
            pipe_size_obtained=1 << 20,
            bytes_per_s=3e9,
            ratio_to_memcpy=0.3,
            verified=True,
            available=True,
            reason=None,
        ),
        dict(
            strategy="hugetlb",
            copier="numpy",
            size=1 << 30,
            threads=1,
            pipe_size_obtained=0,
            bytes_per_s=None,
            ratio_to_memcpy=None,
            verified=False,
            available=False,
            reason="no free hugetlb pages",
        ),
    ]
    text = answer(pd.DataFrame(rows), {"memcpy_bytes_per_s": 1e10})
    assert text.startswith("For 1024 MiB") and "was vmsplice-splice" in text
    assert "vmsplice/splice is the answer" in text and "no free hugetlb pages" in text


def test_no_verified_strategy():
    rows = [
        dict(
            strategy="pwrite",
            copier="kernel",
            size=4096,
            threads=1,
            pipe_size_obtained=0,
            bytes_per_s=1.0,
            ratio_to_memcpy=0.1,
            verified=False,
            available=True,
            reason=None,
        )
    ]
    assert "nothing to conclude" in answer(pd.DataFrame(rows), {"memcpy_bytes_per_s": 1.0})
