"""The expert-parallel layer across gloo processes equals one process (minimoe.distributed.ep).

Each test starts W processes (`minimoe.distributed.launch`), so each is slow (process start-up
and imports dominate); the cases run in one launch per world size.
"""

from __future__ import annotations

import pytest

from minimoe.distributed.launch import RankFailed, launch
from minimoe.distributed.verify import CASES, Case, check_cases, fail_on_rank, hang_on_rank

pytestmark = pytest.mark.slow

ATOL = 1e-5  # float32: sums of a few dozen products, in a different order


def _assert_all_close(results: list[dict], world: int) -> None:
    assert len(results) == world
    for rank, by_case in enumerate(results):
        for name, res in by_case.items():
            for what, diff in res["max_abs_diff"].items():
                assert diff <= ATOL, f"rank {rank}, {name}: {what} differs by {diff:.2e}"


def test_two_ranks_every_case() -> None:
    cases = (*CASES, Case("a rank with no tokens", tokens=(0, 5)))
    results = launch(check_cases, 2, (cases,))
    _assert_all_close(results, 2)
    # the capacity case really dropped slots, and the skewed one sent everything to rank 1
    assert sum(r["fixed capacity (drops)"]["dropped_slots"] for r in results) > 0
    assert results[0]["a rank with no tokens"]["tokens"] == 0


def test_three_ranks() -> None:
    cases = (
        Case("dropless", tokens=(5, 1, 7)),
        Case("all tokens to the last rank's experts", skew="one_rank", tokens=3),
        Case("fixed capacity", dispatch="capacity", tokens=6),
    )
    results = launch(check_cases, 3, (cases, 4))
    # E = 4 experts over 3 ranks: refused, naming both numbers
    for res in results:
        message = res.pop("refusal")
        assert "n_experts=4" in message and "world_size=3" in message, message
    _assert_all_close(results, 3)


def test_four_ranks_and_expert_data_parallel() -> None:
    cases = (
        Case("dropless", tokens=4, experts_per_rank=1, top_k=1),
        Case("T = 1 per rank", tokens=1),
        Case("expert-data parallel, EP = 2", ep_size=2, aux_coef=0.1),
        Case("expert-data parallel, EP = 1", ep_size=1),
    )
    results = launch(check_cases, 4, (cases,))
    _assert_all_close(results, 4)


def test_a_failing_rank_ends_all_ranks() -> None:
    """Rank 1 raises while rank 0 waits in an all-reduce: the launch ends with rank 1's error,
    well before the process group's timeout."""
    import time

    start = time.perf_counter()
    with pytest.raises(RankFailed, match="deliberate failure on rank 1") as info:
        launch(fail_on_rank, 2, (1,), timeout_s=120.0)
    assert info.value.rank == 1
    assert time.perf_counter() - start < 100.0


def test_a_hanging_rank_times_out() -> None:
    """Rank 1 never joins the all-reduce: rank 0's collective fails at the group's timeout
    (3 s here), and the launch ends every rank with rank 0's timeout error."""
    import time

    start = time.perf_counter()
    with pytest.raises(RankFailed) as info:
        launch(hang_on_rank, 2, (1,), timeout_s=3.0, wall_timeout_s=120.0)
    assert info.value.rank == 0
    assert "timed out" in str(info.value).lower() or "timeout" in str(info.value).lower()
    assert time.perf_counter() - start < 100.0
