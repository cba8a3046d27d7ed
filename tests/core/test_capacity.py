import math

import pytest
import torch

from minimoe import assign_slots, expert_capacity, renormalize_survivors
from minimoe.testing import assert_close


def test_formulas_differ_as_documented():
    # T=10, E=4, K=1, cf=1: T/E = 2.5; a ceil gives 3 (a floor, as makeMoE writes it, would give 2)
    assert expert_capacity(10, 4, 1, "deepspeed", 1.0) == 3
    assert expert_capacity(10, 4, 1, "megatron", 1.0) == 3
    assert expert_capacity(10, 4, 1, "tutel", 1.0) == 3
    # with K=2 Tutel rounds before the xK: 2 * int(1 * ceil(2.5)) = 6, DeepSpeed ceil(2.5 * 2) = 5
    assert expert_capacity(10, 4, 2, "tutel", 1.0) == 6
    assert expert_capacity(10, 4, 2, "deepspeed", 1.0) == 5
    assert expert_capacity(10, 4, 2, "tutel", 1.25) == 2 * int(1.25 * 3)  # = 6
    assert expert_capacity(10, 4, 2, "deepspeed", 1.25) == math.ceil(2.5 * 2.5)  # = 7
    assert expert_capacity(10, 4, 2, "dropless", 1.0) is None
    assert expert_capacity(10, 4, 2, "switch", 1.0, fixed_capacity=3) == 3


def test_min_capacity_clamps():
    assert expert_capacity(4, 4, 1, "deepspeed", 1.0) == 1
    assert expert_capacity(4, 4, 1, "deepspeed", 1.0, min_capacity=8) == 8
    assert expert_capacity(0, 4, 1, "megatron", 1.0, min_capacity=2) == 2


def test_bad_capacity_inputs():
    with pytest.raises(ValueError, match="capacity_factor must be > 0"):
        expert_capacity(8, 4, 1, "deepspeed", 0.0)
    with pytest.raises(ValueError, match="not one of"):
        expert_capacity(8, 4, 1, "floor", 1.0)
    with pytest.raises(ValueError, match="fixed_capacity"):
        expert_capacity(8, 4, 1, "switch", 1.0)
    with pytest.raises(ValueError, match=r"top_k must be an int in \[1, 4\], got 5"):
        expert_capacity(8, 4, 5, "deepspeed", 1.0)


# tokens 0..3, two choices each; C = 2 per expert
EXPERT = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0]])
GATE = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.9, 0.1], [0.55, 0.45]])


def test_position_policy_hand_case():
    keep, pos = assign_slots(EXPERT, GATE, 3, 2, "position")
    # expert 0 is asked by (0,0), (1,0), (2,0), (3,1) in token order: keeps tokens 0 and 1
    # expert 1 by (0,1), (1,1), (3,0): keeps tokens 0 and 1; expert 2 by (2,1): kept
    assert keep.tolist() == [[True, True], [True, True], [False, True], [False, False]]
    assert pos.tolist() == [[0, 0], [1, 1], [-1, 0], [-1, -1]]


def test_k_major_policy_hand_case():
    keep, pos = assign_slots(EXPERT, GATE, 3, 2, "k_major")
    # first choices first: expert 1 now takes token 3's first choice before token 0's second
    assert keep.tolist() == [[True, True], [True, False], [False, True], [True, False]]
    assert pos.tolist() == [[0, 1], [1, -1], [-1, 0], [0, -1]]


def test_probs_policy_keeps_the_largest_gates():
    keep, pos = assign_slots(EXPERT, GATE, 3, 2, "probs")
    # expert 0: gates 0.6, 0.7, 0.9, 0.45 -> keeps tokens 2 and 1; expert 1: 0.4, 0.3, 0.55 -> 3, 0
    assert keep.tolist() == [[False, True], [True, False], [True, True], [True, False]]
    assert pos[2, 0] == 0 and pos[1, 0] == 1 and pos[3, 0] == 0 and pos[0, 1] == 1


def test_batch_priority_orders_tokens_by_their_top_gate():
    keep, _ = assign_slots(EXPERT, GATE, 3, 1, "batch_priority")
    # token order by max gate: 2 (0.9), 1 (0.7), 0 (0.6), 3 (0.55); first choices first
    assert keep.tolist() == [[False, False], [False, False], [True, True], [True, False]]


def test_random_policy_is_seeded_and_respects_capacity():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    expert = torch.randint(0, 4, (64, 2))
    expert[:, 1] = (expert[:, 0] + 1) % 4
    gate = torch.rand(64, 2)
    k1, _ = assign_slots(expert, gate, 4, 10, "random", generator=g1)
    k2, _ = assign_slots(expert, gate, 4, 10, "random", generator=g2)
    assert torch.equal(k1, k2)
    routed = torch.bincount(expert.flatten(), minlength=4)
    kept = torch.bincount(expert[k1], minlength=4)
    assert torch.equal(kept, routed.clamp(max=10))


def test_groups_are_capped_separately():
    expert = torch.zeros(6, 1, dtype=torch.long)  # every token wants expert 0
    keep, pos = assign_slots(expert, torch.ones(6, 1), 2, 2, "position", group_size=3)
    assert keep.flatten().tolist() == [True, True, False, True, True, False]
    assert pos.flatten().tolist() == [0, 1, -1, 0, 1, -1]
    with pytest.raises(ValueError, match="do not split into groups"):
        assign_slots(expert, torch.ones(6, 1), 2, 2, "position", group_size=4)


def test_dropless_keeps_everything_and_empty_input():
    keep, pos = assign_slots(EXPERT, GATE, 3, None)
    assert keep.all() and pos[:, 0].tolist() == [0, 1, 2, 2]
    keep0, pos0 = assign_slots(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), 3, 4)
    assert keep0.shape == (0, 2) and pos0.shape == (0, 2)
    with pytest.raises(ValueError, match="policy="):
        assign_slots(EXPERT, GATE, 3, 2, "lifo")


def test_renormalize_survivors():
    gate = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.7, 0.3]])
    keep = torch.tensor([[True, False], [False, False], [True, True]])
    out = renormalize_survivors(gate, keep)
    assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.7, 0.3]]), name="renormalised")
