"""Hash routing (arXiv 2106.04426): a seeded permutation of the vocabulary, mod E."""

from __future__ import annotations

import pytest
import torch

from minimoe.zoo import hash_route, hash_table


@pytest.mark.parametrize("V, E", [(256, 8), (10, 3), (5, 8), (1, 1), (7, 7)])
def test_table_is_the_seeded_permutation_mod_E_and_balanced(V, E):
    expert_V = hash_table(V, E, seed=3)
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(3))
    assert torch.equal(expert_V, perm % E)
    counts = torch.bincount(expert_V, minlength=E)
    assert int(counts.max()) - int(counts.min()) <= 1
    assert int(counts.sum()) == V


def test_table_depends_on_the_seed_only():
    assert torch.equal(hash_table(64, 4, seed=1), hash_table(64, 4, seed=1))
    assert not torch.equal(hash_table(64, 4, seed=1), hash_table(64, 4, seed=2))


def test_route_looks_up_any_shape():
    expert_V = torch.tensor([2, 0, 1, 1])
    token = torch.tensor([[3, 0], [1, 2]])
    assert hash_route(token, expert_V).tolist() == [[1, 2], [0, 1]]
    assert hash_route(torch.zeros(0, dtype=torch.int64), expert_V).shape == (0,)


@pytest.mark.parametrize(
    "token, err",
    [
        (torch.tensor([4]), ValueError),
        (torch.tensor([-1]), ValueError),
        (torch.tensor([1.0]), TypeError),
        (torch.tensor([True]), TypeError),
    ],
)
def test_route_bad_input(token, err):
    with pytest.raises(err):
        hash_route(token, torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize(
    "args, err", [((0, 2), ValueError), ((4, 0), ValueError), ((4.0, 2), TypeError)]
)
def test_table_bad_input(args, err):
    with pytest.raises(err):
        hash_table(*args)
