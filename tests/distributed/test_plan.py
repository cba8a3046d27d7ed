"""The single-process planning functions of expert parallelism (minimoe.distributed.plan)."""

from __future__ import annotations

import pytest
import torch

from minimoe.distributed import (
    a2a_bytes_model,
    best_placement_brute_force,
    cross_rank_slots,
    expert_load_by_rank,
    expert_ranks,
    greedy_placement,
    order_by_rank,
    send_counts,
    traffic_from_load,
    traffic_matrix,
)


def _skewed_ids(n: int, E: int, seed: int, skew: float) -> torch.Tensor:
    """n expert ids drawn from a Zipf-like distribution over a random permutation of E experts."""
    g = torch.Generator().manual_seed(seed)
    p_E = (torch.arange(1, E + 1, dtype=torch.float64) ** -skew)[torch.randperm(E, generator=g)]
    return torch.multinomial(p_E, n, replacement=True, generator=g)


# ---------------------------------------------------------------- expert_ranks


def test_expert_ranks_contiguous() -> None:
    assert expert_ranks(8, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert expert_ranks(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert expert_ranks(4, 4).tolist() == [0, 1, 2, 3]
    assert expert_ranks(5, 1).tolist() == [0] * 5
    assert expert_ranks(8, 2).dtype == torch.int64


def test_expert_ranks_refuses_uneven() -> None:
    with pytest.raises(ValueError, match=r"n_experts=6.*world_size=4"):
        expert_ranks(6, 4)
    with pytest.raises(ValueError, match="world_size"):
        expert_ranks(4, 0)
    with pytest.raises(TypeError, match="n_experts"):
        expert_ranks(4.0, 2)


# ---------------------------------------------------------------- send_counts


def test_send_counts_hand_case() -> None:
    rank_E = expert_ranks(8, 2)
    expert_TK = torch.tensor([[0, 5], [7, 1], [3, 4]])
    assert send_counts(expert_TK, rank_E, 2).tolist() == [3, 3]
    assert send_counts(torch.tensor([6, 6, 7]), rank_E, 2).tolist() == [0, 3]
    assert send_counts(torch.tensor([2, 4, 5]), expert_ranks(6, 3), 3).tolist() == [0, 1, 2]


def test_send_counts_edge_cases() -> None:
    rank_E = expert_ranks(4, 2)
    empty = send_counts(torch.zeros(0, 2, dtype=torch.long), rank_E, 2)
    assert empty.tolist() == [0, 0] and empty.dtype == torch.int64
    assert send_counts(torch.tensor([1, 0, 1, 1]), rank_E, 2).tolist() == [4, 0]  # all to rank 0
    # a world larger than the placement uses: the extra ranks receive nothing
    assert send_counts(torch.tensor([0, 3]), rank_E, 3).tolist() == [1, 1, 0]


def test_send_counts_bad_input() -> None:
    rank_E = expert_ranks(4, 2)
    with pytest.raises(ValueError, match="expert_N"):
        send_counts(torch.tensor([0, 4]), rank_E, 2)
    with pytest.raises(ValueError, match="world_size=1"):
        send_counts(torch.tensor([0]), rank_E, 1)
    with pytest.raises(TypeError, match="expert_N"):
        send_counts(torch.tensor([0.0]), rank_E, 2)


# ---------------------------------------------------------------- order_by_rank


def test_order_by_rank_hand_case() -> None:
    rank_E = expert_ranks(8, 2)
    expert_N = torch.tensor([0, 5, 7, 1, 3, 4])
    order_N, inverse_N = order_by_rank(expert_N, rank_E)
    # rank 0 first (experts 0, 1, 3 in expert order), then rank 1 (4, 5, 7)
    assert order_N.tolist() == [0, 3, 4, 5, 1, 2]
    assert expert_N[order_N].tolist() == [0, 1, 3, 4, 5, 7]
    assert inverse_N.tolist() == [0, 4, 5, 1, 2, 3]


def test_order_by_rank_is_stable_and_inverts() -> None:
    rank_E = torch.tensor([1, 0, 1, 0])  # a non-contiguous placement: experts 1, 3 on rank 0
    expert_N = _skewed_ids(50, 4, seed=3, skew=1.0)
    order_N, inverse_N = order_by_rank(expert_N, rank_E)
    key_N = rank_E[expert_N] * 4 + expert_N
    sorted_key = key_N[order_N]
    assert bool((sorted_key[1:] >= sorted_key[:-1]).all())
    for k in key_N.unique():  # stable: slots with equal keys keep their order
        run = order_N[sorted_key == k]
        assert bool((run[1:] > run[:-1]).all())
    x_N = torch.randn(50)
    assert torch.equal(x_N[order_N][inverse_N], x_N)
    assert torch.equal(order_N[inverse_N], torch.arange(50))
    # the chunks follow send_counts
    send_W = send_counts(expert_N, rank_E, 2)
    assert rank_E[expert_N[order_N]].tolist() == [0] * int(send_W[0]) + [1] * int(send_W[1])


def test_order_by_rank_empty() -> None:
    order_N, inverse_N = order_by_rank(torch.zeros(0, dtype=torch.long), expert_ranks(4, 2))
    assert order_N.numel() == 0 and inverse_N.numel() == 0 and order_N.dtype == torch.int64


# ---------------------------------------------------------------- traffic, load, placement


def test_traffic_matrix_hand_case() -> None:
    rank_E = expert_ranks(4, 2)
    ids = [
        torch.tensor([[0, 2], [3, 1]]),
        torch.tensor([2, 2, 3]),
        torch.zeros(0, dtype=torch.long),
    ]
    with pytest.raises(ValueError, match="world_size=2"):
        traffic_matrix(ids, rank_E, 2)
    count_WW = traffic_matrix(ids[:2], rank_E, 2)
    assert count_WW.tolist() == [[2, 2], [0, 3]]
    # rows are each rank's send_counts
    for w in range(2):
        assert count_WW[w].tolist() == send_counts(ids[w], rank_E, 2).tolist()
    # three source ranks, one with no tokens
    count_WW = traffic_matrix(ids, expert_ranks(3, 3)[[0, 1, 2, 2]], 3)
    assert count_WW.tolist() == [[1, 1, 2], [0, 0, 3], [0, 0, 0]]
    # a (W, N) tensor
    both = torch.tensor([[0, 1], [3, 3]])
    assert traffic_matrix(both, rank_E, 2).tolist() == [[2, 0], [0, 2]]


def test_load_and_cross_rank_slots() -> None:
    ids = [torch.tensor([0, 0, 3]), torch.tensor([1, 2, 2, 2])]
    count_WE = expert_load_by_rank(ids, 4)
    assert count_WE.tolist() == [[2, 0, 0, 1], [0, 1, 3, 0]]
    rank_E = expert_ranks(4, 2)
    assert cross_rank_slots(count_WE, rank_E) == 1 + 1  # expert 3 from rank 0, expert 1 from 1
    assert traffic_from_load(count_WE, rank_E).tolist() == [[2, 1], [1, 3]]
    assert cross_rank_slots(count_WE, torch.tensor([0, 1, 1, 0])) == 0
    assert cross_rank_slots(count_WE, torch.tensor([1, 0, 0, 1])) == 7
    with pytest.raises(TypeError, match="expert_per_rank"):
        expert_load_by_rank(torch.tensor([[0, 1]]), 4)
    with pytest.raises(ValueError, match=r"expert_per_rank\[1\]"):
        expert_load_by_rank([torch.tensor([0]), torch.tensor([4])], 4)


def test_greedy_placement_hand_case() -> None:
    count_WE = torch.tensor([[5, 0, 1, 4], [0, 3, 2, 0]])
    rank_E = greedy_placement(count_WE, 2)
    # gains (count minus the column mean): (e0, w0) 2.5, (e3, w0) 2, (e1, w1) 1.5, (e2, w1) 0.5
    assert rank_E.tolist() == [0, 1, 1, 0]
    assert cross_rank_slots(count_WE, rank_E) == 1
    # rank 0 wants every expert, but holds only two: the two largest, the rest go to rank 1
    count_WE = torch.tensor([[9, 8, 7, 6], [0, 0, 0, 0]])
    assert greedy_placement(count_WE, 2).tolist() == [0, 0, 1, 1]
    # no traffic: ties broken by expert id then rank, every rank still gets exactly J
    assert greedy_placement(torch.zeros(3, 6, dtype=torch.long), 2).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="experts_per_rank=3"):
        greedy_placement(count_WE, 3)


def test_greedy_placement_uses_gain_not_count() -> None:
    """Expert 1 is used equally by both ranks (41 each): placing it saves the same anywhere. A
    greedy on raw counts puts it first on rank 0 and then expert 3 too, pushing expert 0 (which
    rank 0 uses more) to rank 1: 64 crossing slots, worse than the contiguous 62."""
    count_WE = torch.tensor([[6, 41, 3, 14], [4, 41, 5, 14]])
    rank_E = greedy_placement(count_WE, 2)
    assert cross_rank_slots(count_WE, rank_E) == 62
    assert cross_rank_slots(count_WE, torch.tensor([1, 0, 1, 0])) == 64


@pytest.mark.parametrize(("W", "E"), [(2, 4), (2, 6), (3, 6), (2, 8), (4, 8)])
def test_greedy_never_worse_than_contiguous(W: int, E: int) -> None:
    J = E // W
    for skew in (0.5, 1.2, 2.0):
        for seed in range(20):
            ids = [_skewed_ids(64, E, seed * 10 + w, skew=skew) for w in range(W)]
            count_WE = expert_load_by_rank(ids, E)
            greedy = greedy_placement(count_WE, J)
            assert torch.bincount(greedy, minlength=W).tolist() == [J] * W
            contiguous = cross_rank_slots(count_WE, expert_ranks(E, W))
            assert cross_rank_slots(count_WE, greedy) <= contiguous, f"skew {skew} seed {seed}"


def test_greedy_optimal_with_two_ranks() -> None:
    """With two ranks the rule is optimal: checked against brute force on skewed traces."""
    for E in (4, 6, 8):
        for seed in range(8):
            ids = [_skewed_ids(40, E, seed * 10 + w, skew=1.2) for w in range(2)]
            count_WE = expert_load_by_rank(ids, E)
            best = cross_rank_slots(count_WE, best_placement_brute_force(count_WE, E // 2))
            assert cross_rank_slots(count_WE, greedy_placement(count_WE, E // 2)) == best


def test_greedy_optimal_on_small_three_rank_cases() -> None:
    """Where each rank prefers its own experts (the case co-location is for), greedy finds the
    brute-forced optimum with three ranks too; on a case found by search it does not."""
    for seed in range(10):
        W, E = 3, 6
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(E, generator=g)
        ids = []
        for w in range(W):  # rank w prefers experts perm[2w : 2w + 2]
            own = perm[2 * w : 2 * w + 2][torch.randint(0, 2, (30,), generator=g)]
            other = torch.randint(0, E, (15,), generator=g)
            ids.append(torch.cat([own, other]))
        count_WE = expert_load_by_rank(ids, E)
        best = cross_rank_slots(count_WE, best_placement_brute_force(count_WE, 2))
        assert cross_rank_slots(count_WE, greedy_placement(count_WE, 2)) == best, seed
    count_WE = torch.tensor([[0, 0, 2, 2, 2, 6], [3, 1, 1, 1, 6, 0], [3, 0, 1, 6, 0, 2]])
    greedy = cross_rank_slots(count_WE, greedy_placement(count_WE, 2))
    best = cross_rank_slots(count_WE, best_placement_brute_force(count_WE, 2))
    assert (best, greedy) == (12, 13)


# ---------------------------------------------------------------- bytes model


def test_a2a_bytes_model() -> None:
    # 2 * T * K * D * bytes * (EP - 1) / EP
    assert a2a_bytes_model(10, 2, 4, 4, 2) == 2 * 10 * 2 * 4 * 4 * 1 / 2
    assert a2a_bytes_model(1024, 2, 4096, 2, 8) == pytest.approx(2 * 1024 * 2 * 4096 * 2 * 7 / 8)
    assert a2a_bytes_model(0, 2, 4, 4, 2) == 0.0  # T = 0
    assert a2a_bytes_model(10, 2, 4, 4, 1) == 0.0  # one rank: nothing leaves
    with pytest.raises(ValueError, match="ep_size"):
        a2a_bytes_model(10, 2, 4, 4, 0)
    with pytest.raises(ValueError, match="n_tokens"):
        a2a_bytes_model(-1, 2, 4, 4, 2)
