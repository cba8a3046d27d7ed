"""Check for exercise 01.3: total and active parameters of a Mixtral-style MoE decoder.

The learner writes `count_params(vocab_size, hidden_size, n_layers, n_heads, n_kv_heads,
intermediate_size, n_experts, top_k, tied_embeddings) -> (total, active)`; the reference is
`minimoe.count_decoder_params`. A wrong count is compared with the counts of known mistakes
(every expert counted active, the router forgotten, w3 forgotten, k/v counted with all heads, …).
"""

from __future__ import annotations

from collections.abc import Callable

from minimoe.course.checks._common import Exercise
from minimoe.params import PUBLISHED_CONFIGS, count_decoder_params, count_moe_params

PARAMS = Exercise("01.3", "parameter counting", library=(count_decoder_params, count_moe_params))

SIZES = (
    "vocab_size",
    "hidden_size",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "intermediate_size",
    "n_experts",
    "top_k",
    "tied_embeddings",
)


def _count(
    c: dict,
    *,
    w3: bool = True,
    router: bool = True,
    kv_all_heads: bool = False,
    o_proj: bool = True,
    norms: bool = True,
    embeddings: int | None = None,
    active_embeddings: bool = True,
    active_experts: int | None = None,
) -> tuple[int, int]:
    """The count with one mistake switched on (the defaults give the right answer)."""
    D, L, E = c["hidden_size"], c["n_layers"], c["n_experts"]
    K = c["top_k"] if active_experts is None else active_experts
    kv_dim = D if kv_all_heads else c["n_kv_heads"] * (D // c["n_heads"])
    attention = D * D + 2 * D * kv_dim + (D * D if o_proj else 0)
    expert = (3 if w3 else 2) * D * c["intermediate_size"]
    shared = attention + (2 * D if norms else 0) + (E * D if router else 0)
    n_emb = embeddings if embeddings is not None else (1 if c["tied_embeddings"] else 2)
    emb = n_emb * c["vocab_size"] * D + (D if norms else 0)
    total = emb + L * (shared + E * expert)
    active = (emb if active_embeddings else 0) + L * (shared + K * expert)
    return total, active


def _variants(c: dict) -> list[tuple[str, tuple[int, int]]]:
    untied = not c["tied_embeddings"]
    return [
        ("counted every expert as active; only top_k experts per layer run per token",
         _count(c, active_experts=c["n_experts"])),
        ("counted one expert as active per layer; each token uses top_k of them",
         _count(c, active_experts=1)),
        ("forgot the router: each layer has an n_experts x hidden_size gate matrix",
         _count(c, router=False)),
        ("forgot w3: a SwiGLU expert has three matrices (w1, w3: D->F, and w2: F->D)",
         _count(c, w3=False)),
        ("counted k and v with n_heads; with grouped-query attention they have n_kv_heads "
         "heads of size hidden_size // n_heads", _count(c, kv_all_heads=True)),
        ("forgot the output projection o of attention (hidden_size x hidden_size)",
         _count(c, o_proj=False)),
        ("forgot the RMSNorm weights: two per layer and a final one, hidden_size each",
         _count(c, norms=False)),
        ("counted the embedding matrix once, but with tied_embeddings=False the output head "
         "(lm_head) is a second vocab_size x hidden_size matrix" if untied else
         "counted the output head separately, but with tied_embeddings=True it is the "
         "embedding matrix itself", _count(c, embeddings=1 if untied else 2)),
        ("left the embeddings out of the active count; the published active counts "
         "(Mixtral's 12.9B) include them", _count(c, active_embeddings=False)),
    ]  # fmt: skip


def check_count_params(count_params: Callable) -> None:
    """Check `count_params(...) -> (total, active)` against `minimoe.count_decoder_params`."""
    mixtral = {k: v for k, v in PUBLISHED_CONFIGS["Mixtral-8x7B"].items() if k in SIZES}
    cases = [
        mixtral,
        dict(mixtral, tied_embeddings=True, n_kv_heads=32, top_k=1),
        dict(vocab_size=100, hidden_size=12, n_layers=3, n_heads=4, n_kv_heads=2,
             intermediate_size=20, n_experts=6, top_k=6, tied_embeddings=False),
        dict(vocab_size=1000, hidden_size=64, n_layers=2, n_heads=8, n_kv_heads=1,
             intermediate_size=96, n_experts=16, top_k=4, tied_embeddings=True),
    ]  # fmt: skip
    for c in cases:
        case = "Mixtral 8x7B" if c == mixtral else ", ".join(f"{k}={v}" for k, v in c.items())
        out = PARAMS.call(count_params, case=case, **c)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            got = "None" if out is None else type(out).__name__
            raise PARAMS.fail(f"returned {got} on {case}; return a pair (total, active)")
        try:
            total, active = int(out[0]), int(out[1])
        except (TypeError, ValueError):
            raise PARAMS.fail(
                f"returned {out!r} on {case}; total and active must be ints"
            ) from None
        expected = count_decoder_params(**c)
        if (total, active) == expected:
            continue
        for hint, wrong in _variants(c):
            if (total, active) == wrong and wrong != expected:
                raise PARAMS.fail(f"wrong count on {case}. Likely mistake: {hint}")
        raise PARAMS.fail(
            f"wrong count on {case}: got total={total:,}, active={active:,}; expected "
            f"total={expected[0]:,} (off by {total - expected[0]:+,}), active={expected[1]:,} "
            f"(off by {active - expected[1]:+,}). Count one layer at a time: attention "
            "(q, k, v, o), two norms, router, experts; then embeddings, lm_head, final norm"
        )
    PARAMS.passed(f"{len(cases)} configs incl. Mixtral 8x7B: 46.7B total / 12.9B active")
