"""Check for exercise 08.3: a hash router (Roller et al. 2021, "Hash Layers For Large Sparse
Models", arXiv 2106.04426: a fixed random hash of the token id picks the expert).

The learner writes two functions:

- `hash_table(vocab_size, n_experts, seed=0) -> expert_V`: a seeded random permutation of the V
  token ids, `torch.randperm(V, generator=torch.Generator().manual_seed(seed))`, taken modulo E,
  so every expert owns V/E ids (±1) and the ids of one expert are scattered over the vocabulary;
- `hash_route(token_T, expert_V) -> expert_T`: each token's expert, `expert_V[token_T]`, with a
  ValueError for a token id outside [0, V).

Compared with `minimoe.zoo.hash_table` / `hash_route`. Known wrong variants: the id modulo E
without a permutation (neighbouring ids take turns, not a hash), contiguous blocks of ids per
expert, random experts drawn independently (unbalanced), the permutation from the global RNG (not
reproducible), and a range check that lets negative ids through (Python indexing wraps them
round to the end of the table).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.zoo import hash_route, hash_table

HASH = Exercise("08.3", "a hash router", library=(hash_table, hash_route))


def _variants() -> list[tuple[str, Callable]]:
    def blocks(V, E, seed):
        return torch.arange(V) * E // V

    def independent(V, E, seed):
        return torch.randint(0, E, (V,), generator=torch.Generator().manual_seed(seed))

    return [
        ("expert = id % E without a permutation: ids 0, 1, 2, ... take turns, so any pattern in "
         "how ids are numbered shows up in the routing; permute the ids first (torch.randperm "
         "with the seeded generator), then take the result modulo E",
         lambda V, E, seed: torch.arange(V) % E),
        ("contiguous blocks of ids per expert; the ids of one expert should be scattered at "
         "random: take a seeded torch.randperm(V) modulo E", blocks),
        ("each id's expert drawn independently (torch.randint): the experts then own unequal "
         "numbers of ids; a permutation modulo E gives each exactly V/E (±1)", independent),
    ]  # fmt: skip


def _check_table(hash_table_fn: Callable) -> int:
    cases = [(32, 4, 0), (50, 8, 3), (7, 7, 1), (256, 6, 0), (3, 5, 2)]
    for V, E, seed in cases:
        case = f"V={V}, E={E}, seed={seed}"
        out = HASH.call(hash_table_fn, V, E, seed, case=case)
        HASH.expect_tensor(out, (V,), torch.int64, case + " (expert_V)")
        want = hash_table(V, E, seed)
        if torch.equal(out, want):
            continue
        counts = torch.bincount(out.clamp(0, E - 1), minlength=E)
        with torch.random.fork_rng():  # the learner's global RNG state is left as it was
            torch.manual_seed(12345)  # a draw from the global RNG now differs from the first
            again = hash_table_fn(V, E, seed)
        if not torch.equal(out, again):
            raise HASH.fail(
                f"two calls with the same seed gave different tables on {case}: draw the "
                "permutation from torch.Generator().manual_seed(seed), not the global RNG"
            )
        diagnose(HASH, out.double(), want.double(), _variants(), (V, E, seed), case,
                 atol=0, rtol=0)  # fmt: skip
        raise HASH.fail(f"wrong table on {case} (expert loads {counts.tolist()})")
    return len(cases)


def _check_route(hash_route_fn: Callable) -> int:
    g = make_generator(830)
    expert_V = hash_table(40, 4, 0)
    cases = [
        ("T=20 tokens, V=40", torch.randint(0, 40, (20,), generator=g)),
        ("T=5 tokens, all the last id 39", torch.full((5,), 39)),
        ("T=0 tokens", torch.zeros(0, dtype=torch.int64)),
    ]
    for case, token_T in cases:
        out = HASH.call(hash_route_fn, token_T.clone(), expert_V.clone(), case=case)
        HASH.expect_tensor(out, tuple(token_T.shape), torch.int64, case + " (expert_T)")
        if not torch.equal(out, hash_route(token_T, expert_V)):
            raise HASH.fail(f"wrong experts on {case}: expert_T[t] = expert_V[token_T[t]]")
    for bad, what in [(40, "the id V = 40"), (-1, "the id -1")]:
        token_T = torch.tensor([3, bad, 5])
        try:
            HASH.call(hash_route_fn, token_T, expert_V.clone(), case=f"a batch holding {what}")
        except AssertionError as error:
            if "ValueError" in str(error):
                continue
            if bad < 0 or "IndexError" not in str(error):
                raise
        hint = (
            " (Python indexing wraps a negative id round to the end of the table: check "
            "token_T.min() >= 0 too)"
            if bad < 0
            else ""
        )
        raise HASH.fail(
            f"a batch holding {what} (V = 40) must raise ValueError naming token_T, before "
            f"indexing{hint}"
        )
    return len(cases) + 2


def check_hash_router(hash_table_fn: Callable, hash_route_fn: Callable) -> None:
    """Check `hash_table(V, E, seed)` and `hash_route(token_T, expert_V)` against the library."""
    n = _check_table(hash_table_fn) + _check_route(hash_route_fn)
    HASH.passed(f"{n} cases: the table, the route and out-of-range ids")
