import math

import torch

from minimoe import load_balancing_loss, mixtral_load_balancing_loss, z_loss
from minimoe.testing import assert_close


def _balanced(T=8, E=4, K=2):
    probs = torch.full((T, E), 1.0 / E)
    expert = torch.stack([torch.arange(T) % E, (torch.arange(T) + 1) % E], 1)[:, :K]
    return probs, expert


def test_values_at_perfect_balance():
    probs, expert = _balanced()
    assert_close(load_balancing_loss(probs, expert), torch.tensor(1.0), name="switch form")
    assert_close(load_balancing_loss(probs, expert, first_choice_only=True), torch.tensor(1.0))
    assert_close(mixtral_load_balancing_loss(probs, expert), torch.tensor(2.0), name="HF form")


def test_hand_computed_and_collapse():
    probs = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    expert = torch.tensor([[0], [0]])
    # f = [1, 0], P = [0.7, 0.3] -> E * 0.7 = 1.4
    assert_close(load_balancing_loss(probs, expert), torch.tensor(1.4), name="hand case")
    collapsed = torch.zeros(16, 4)
    collapsed[:, 0] = 1.0
    assert_close(
        load_balancing_loss(collapsed, torch.zeros(16, 1, dtype=torch.long)), torch.tensor(4.0)
    )


def test_first_choice_only_counts_column_zero():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]])
    expert = torch.tensor([[0, 1], [1, 2]])
    # first choices only: f = [1/2, 1/2, 0]; P = [0.35, 0.4, 0.25]
    expected = 3 * (0.5 * 0.35 + 0.5 * 0.4)
    assert_close(load_balancing_loss(probs, expert, first_choice_only=True), torch.tensor(expected))
    # all choices: f = [1/4, 2/4, 1/4]
    expected_all = 3 * (0.25 * 0.35 + 0.5 * 0.4 + 0.25 * 0.25)
    assert_close(load_balancing_loss(probs, expert), torch.tensor(expected_all))


def test_gradient_flows_only_through_probs():
    logits = torch.randn(32, 4, requires_grad=True)
    probs = torch.softmax(logits, -1)
    expert = probs.topk(2, -1).indices
    load_balancing_loss(probs, expert).backward()
    assert logits.grad.abs().sum() > 0


def test_padding_mask_leaves_padding_out():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(10, 4), -1)
    expert = probs.topk(2, -1).indices
    mask = torch.tensor([True] * 7 + [False] * 3)
    assert_close(
        load_balancing_loss(probs, expert, mask_T=mask), load_balancing_loss(probs[:7], expert[:7])
    )
    assert_close(
        mixtral_load_balancing_loss(probs, expert, mask_T=mask),
        mixtral_load_balancing_loss(probs[:7], expert[:7]),
    )
    logits = torch.randn(10, 4)
    assert_close(z_loss(logits, mask_T=mask), z_loss(logits[:7]))


def test_z_loss_at_zero_logits_and_by_hand():
    assert_close(z_loss(torch.zeros(5, 8)), torch.tensor(math.log(8) ** 2), name="(log E)^2")
    logits = torch.tensor([[0.0, math.log(3.0)]])  # logsumexp = log 4
    assert_close(z_loss(logits), torch.tensor(math.log(4.0) ** 2))


def test_no_tokens_gives_zero_not_nan():
    empty = torch.zeros(0, 4)
    e = torch.zeros(0, 2, dtype=torch.long)
    for value in (
        load_balancing_loss(empty, e),
        mixtral_load_balancing_loss(empty, e),
        z_loss(empty),
    ):
        assert value.item() == 0.0
