"""What the experts learned: a measure of how much a router's choice says about the text.

Each byte of a text gets a character class, and the router of each MoE layer gives it an expert.
Counting bytes per (class, expert) gives a contingency table `counts_CE`; the mutual information
between class and expert,

    I(class; expert) = sum_{c,e} p(c,e) log( p(c,e) / (p(c) p(e)) )      (nats),

is 0 for a router that ignores the character class and H(class) for one that sends each class
to experts of its own. Dividing by H(class) gives a number in [0, 1]: the fraction of the class
uncertainty that the expert choice removes.

The estimate here is the plug-in one (probabilities = relative counts). It is biased upwards: on
T bytes, even a router that ignores its input scores about (C-1)(E-1) / (2T) nats (Miller 1955).
`random_router_baseline` measures that floor directly: it shuffles the expert choices (same
loads, no link to the text) and recomputes the MI.

The character classes, one per byte (`char_classes`):

| class         | bytes                                                                     |
|---------------|---------------------------------------------------------------------------|
| "whitespace"  | space, \\t, \\n, \\r, \\f, \\v                                                |
| "letter"      | A-Z, a-z, outside keywords                                                |
| "digit"       | 0-9, outside keywords                                                     |
| "punctuation" | every other byte: ASCII symbols (the underscore too), control bytes, and  |
|               | the bytes of non-ASCII (UTF-8) characters                                 |
| "keyword"     | the bytes of a word that is a Python keyword (`keyword.kwlist`)           |

A *word* is a maximal run of the identifier bytes [A-Za-z0-9_], so `if` is a keyword in
`if x:` but not in `elif_`, `iffy` or `_if`. The rule is lexical, not Python's tokenizer: it
also marks English words such as "in", "and", "for" inside docstrings and comments. That is on
purpose: the router sees bytes, not a parse tree.

Left out: soft keywords (`match`, `case`, `type`), estimators less biased than the plug-in one,
and routing with more than one expert per byte (the measure uses each byte's first choice).

Used by chapter 07; the Mixtral paper (arXiv 2401.04088, section 5) makes the same analysis of
its router with text coloured by expert.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import torch

CHAR_CLASSES = ("whitespace", "letter", "digit", "punctuation", "keyword")
WHITESPACE, LETTER, DIGIT, PUNCTUATION, KEYWORD = range(len(CHAR_CLASSES))

_KEYWORD_RE = re.compile(
    rb"(?<![A-Za-z0-9_])(?:"
    + b"|".join(re.escape(k.encode()) for k in sorted(keyword.kwlist, key=len, reverse=True))
    + rb")(?![A-Za-z0-9_])"
)


def _byte_table() -> torch.Tensor:
    table = torch.full((256,), PUNCTUATION, dtype=torch.long)
    for b in b" \t\n\r\f\v":
        table[b] = WHITESPACE
    for lo, hi, cls in ((b"A", b"Z", LETTER), (b"a", b"z", LETTER), (b"0", b"9", DIGIT)):
        table[lo[0] : hi[0] + 1] = cls
    return table


_CLASS_OF_BYTE = _byte_table()


def _as_bytes(text: bytes | str) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"text must be bytes or str, got {type(text).__name__}")


def char_classes(text_bytes: bytes | str) -> torch.Tensor:
    """The character class of every byte (an index into `CHAR_CLASSES`).

    Args:
        text_bytes: the text, as bytes (a str is UTF-8 encoded first).

    Returns:
        class_T: int64, one entry per byte (T = len(text_bytes)).
    """
    data = _as_bytes(text_bytes)
    byte_T = torch.frombuffer(bytearray(data), dtype=torch.uint8).long() if data else torch.zeros(0)
    class_T = _CLASS_OF_BYTE[byte_T.long()]
    for match in _KEYWORD_RE.finditer(data):
        class_T[match.start() : match.end()] = KEYWORD
    return class_T


def class_expert_counts(
    class_T: torch.Tensor, expert_T: torch.Tensor, n_classes: int, n_experts: int
) -> torch.Tensor:
    """The contingency table: how many bytes of each class each expert got.

    Args:
        class_T: class of each byte, in [0, n_classes).
        expert_T: expert of each byte, in [0, n_experts).
        n_classes: C. n_experts: E.

    Returns:
        counts_CE: int64, counts_CE[c, e] = #{t : class_T[t] = c and expert_T[t] = e}.
    """
    if class_T.dim() != 1 or expert_T.dim() != 1 or class_T.shape != expert_T.shape:
        raise ValueError(
            f"class_T and expert_T must be 1-D of the same length, got "
            f"{tuple(class_T.shape)} and {tuple(expert_T.shape)}"
        )
    if n_classes < 1 or n_experts < 1:
        raise ValueError(f"n_classes and n_experts must be >= 1, got {n_classes}, {n_experts}")
    class_T, expert_T = class_T.long().cpu(), expert_T.long().cpu()
    for name, v, n in (("class_T", class_T, n_classes), ("expert_T", expert_T, n_experts)):
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= n):
            raise ValueError(f"{name} must lie in [0, {n}), got [{int(v.min())}, {int(v.max())}]")
    flat = torch.bincount(class_T * n_experts + expert_T, minlength=n_classes * n_experts)
    return flat.view(n_classes, n_experts)


def _joint(counts_CE: torch.Tensor) -> torch.Tensor | None:
    if not isinstance(counts_CE, torch.Tensor) or counts_CE.dim() != 2:
        raise ValueError("counts_CE must be a 2-D tensor (classes, experts)")
    counts = counts_CE.double().cpu()
    if bool((counts < 0).any()) or not bool(torch.isfinite(counts).all()):
        raise ValueError("counts_CE must hold finite, non-negative counts")
    total = counts.sum()
    return None if total == 0 else counts / total


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def mutual_information(counts_CE: torch.Tensor) -> float:
    """Plug-in mutual information between class and expert, in nats.

    Args:
        counts_CE: counts per (class, expert), from `class_expert_counts`.

    Returns:
        I(class; expert) >= 0; 0 when the table is empty (nothing seen, nothing learned).
    """
    p_CE = _joint(counts_CE)
    if p_CE is None:
        return 0.0
    # I = H(class) + H(expert) - H(class, expert); each entropy skips empty cells (0 log 0 = 0)
    mi = _entropy(p_CE.sum(1)) + _entropy(p_CE.sum(0)) - _entropy(p_CE.reshape(-1))
    return max(mi, 0.0)  # rounding can give -1e-17


def class_entropy(counts_CE: torch.Tensor) -> float:
    """H(class) in nats: the most `mutual_information` can be (0 for an empty table)."""
    p_CE = _joint(counts_CE)
    return 0.0 if p_CE is None else _entropy(p_CE.sum(1))


def normalised_mutual_information(counts_CE: torch.Tensor) -> float:
    """I(class; expert) / H(class), in [0, 1]: the share of the class uncertainty the expert
    choice removes. 0 when H(class) = 0 (a single class: there is nothing to tell apart)."""
    h = class_entropy(counts_CE)
    return 0.0 if h == 0 else min(mutual_information(counts_CE) / h, 1.0)


class Baseline(NamedTuple):
    """The MI of routers that ignore the text: mean and standard deviation over `trials`."""

    mean: float
    std: float
    trials: int


def random_router_baseline(
    class_T: torch.Tensor,
    n_experts: int,
    *,
    load_E: torch.Tensor | None = None,
    trials: int = 20,
    seed: int = 0,
) -> Baseline:
    """The MI a router that ignores its input scores, with the same expert loads (permutation test).

    Each trial gives expert e exactly load_E[e] bytes, at random places, and computes the plug-in
    MI with the real classes. Its mean is the floor a trained router's MI must clear: about
    (C-1)(E-1) / (2T) nats for C classes present.

    Args:
        class_T: class of each byte.
        n_experts: E.
        load_E: bytes per expert (sums to T), e.g. the trained router's; None: as even as possible.
        trials: how many shuffles.
        seed: seeds the shuffles.

    Returns:
        Baseline(mean, std, trials), in nats.
    """
    if class_T.dim() != 1:
        raise ValueError(f"class_T must be 1-D, got shape {tuple(class_T.shape)}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    T = class_T.numel()
    if load_E is None:
        load_E = torch.full((n_experts,), T // n_experts, dtype=torch.long)
        load_E[: T % n_experts] += 1
    load_E = torch.as_tensor(load_E).long().cpu()
    if load_E.shape != (n_experts,) or bool((load_E < 0).any()) or int(load_E.sum()) != T:
        raise ValueError(
            f"load_E must be {n_experts} non-negative counts summing to T={T}, got {load_E.tolist()}"
        )
    expert_T = torch.repeat_interleave(torch.arange(n_experts), load_E)
    n_classes = int(class_T.max()) + 1 if T else 1
    gen = torch.Generator().manual_seed(seed)
    mis = []
    for _ in range(trials):
        shuffled_T = expert_T[torch.randperm(T, generator=gen)]
        mis.append(
            mutual_information(class_expert_counts(class_T, shuffled_T, n_classes, n_experts))
        )
    mean = sum(mis) / trials
    std = math.sqrt(sum((m - mean) ** 2 for m in mis) / trials)
    return Baseline(mean, std, trials)


@torch.no_grad()
def route_text(model: torch.nn.Module, text_bytes: bytes | str) -> list[torch.Tensor]:
    """The expert each byte of a text is sent to first, in every MoE layer of a language model.

    The text is cut into consecutive windows of the model's `cfg.seq_len` bytes, each routed on
    its own (training windows start without context too). The model runs in eval mode (no router
    noise, no dropout) and is put back in the mode it was in. A byte's expert is its first choice
    (`expert_TK[:, 0]`), whether or not a capacity limit dropped it.

    Args:
        model: a `minimoe.lm.model.TinyLM` (or any module with `cfg.seq_len` whose forward maps
            idx_BS to (logits, [MoEResult per MoE layer])).
        text_bytes: the text (a str is UTF-8 encoded).

    Returns:
        One expert_T (int64, T = len(text_bytes)) per MoE layer, in depth order; [] for a dense
        model.
    """
    data = _as_bytes(text_bytes)
    if not data:
        return [torch.zeros(0, dtype=torch.long) for _ in getattr(model, "moe_layers", [])]
    seq_len = model.cfg.seq_len
    device = next(model.parameters()).device
    idx_T = torch.tensor(list(data), dtype=torch.long, device=device)
    n_full = len(data) // seq_len * seq_len
    pieces = [idx_T[:n_full].view(-1, seq_len), idx_T[n_full:].view(1, -1)]
    was_training = model.training
    model.eval()
    try:
        per_layer: list[list[torch.Tensor]] = []
        for idx_BS in pieces:
            if idx_BS.numel() == 0:
                continue
            _, results = model(idx_BS)
            per_layer = per_layer or [[] for _ in results]
            for chosen, result in zip(per_layer, results):
                chosen.append(result.routing.expert_TK[:, 0].cpu())
    finally:
        model.train(was_training)
    return [torch.cat(chosen) for chosen in per_layer]


@dataclass
class LayerSpecialisation:
    """How much one MoE layer's routing says about the character class.

    Attributes:
        layer: the MoE layer's index (0 = the first MoE layer).
        counts_CE: bytes per (class, expert).
        mi: I(class; expert) in nats.
        normalised: mi / H(class).
        baseline: the MI of shuffled routings with the same loads (`random_router_baseline`).
    """

    layer: int
    counts_CE: torch.Tensor
    mi: float
    normalised: float
    baseline: Baseline

    @property
    def z_score(self) -> float:
        """How many baseline standard deviations the MI lies above the baseline's mean."""
        return (self.mi - self.baseline.mean) / max(self.baseline.std, 1e-12)


def measure_specialisation(
    model: torch.nn.Module, text_bytes: bytes | str, *, trials: int = 20, seed: int = 0
) -> list[LayerSpecialisation]:
    """Route a text and measure, per MoE layer, the MI between character class and expert.

    Args:
        model: see `route_text`; its MoE layers have `cfg.n_experts` experts.
        text_bytes: the text.
        trials, seed: of the random-router baseline.

    Returns:
        One `LayerSpecialisation` per MoE layer, in depth order.
    """
    class_T = char_classes(text_bytes)
    n_experts = model.cfg.n_experts
    out = []
    for i, expert_T in enumerate(route_text(model, text_bytes)):
        counts_CE = class_expert_counts(class_T, expert_T, len(CHAR_CLASSES), n_experts)
        load_E = counts_CE.sum(0)
        baseline = random_router_baseline(
            class_T, n_experts, load_E=load_E, trials=trials, seed=seed
        )
        mi = mutual_information(counts_CE)
        out.append(
            LayerSpecialisation(
                i, counts_CE, mi, normalised_mutual_information(counts_CE), baseline
            )
        )
    return out
