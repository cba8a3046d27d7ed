"""Text coloured by expert: see which expert each token went to, in the text itself.

`token_html` renders a routed sequence (the words of a sentence, the characters of source code)
as HTML, each token on the background colour of its chosen expert (the course's one palette,
`minimoe.viz._widgets.expert_colour`), the text black or white for contrast, whitespace and
newlines kept, everything HTML-escaped. Hovering a token shows its expert and gate weight. A
token whose slot was dropped (expert id -1) is shown grey and struck through.
`token_colouring` wraps the same HTML for display in a notebook.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import torch
from IPython.display import HTML

from minimoe.viz._widgets import DROPPED_COLOUR, expert_colour, text_colour

_MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
_BOX = "font-size:13px;line-height:1.9;white-space:pre-wrap;word-break:break-word;"
_SPAN = "background:{bg};color:{fg};border-radius:3px;padding:1px 0;"


def _as_list(values, name: str) -> list:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one value per token), got {tuple(values.shape)}")
        return values.detach().cpu().tolist()
    return list(values)


def _ranges(values: list[int]) -> str:
    """[1, 2, 3, 7] -> '1–3, 7'."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if start == v else f"{start}–{v}")
            start = None
    return ", ".join(parts)


def token_html(
    tokens: Sequence[str],
    expert_T: torch.Tensor | Sequence[int],
    n_experts: int,
    *,
    gate_T: torch.Tensor | Sequence[float] | None = None,
    legend: bool = True,
    monospace: bool = True,
) -> str:
    """HTML of the tokens, each on its expert's colour.

    Args:
        tokens: the token strings, in order (concatenated as they are: include spaces).
        expert_T: the chosen (e.g. first-choice) expert of each token; -1 marks a dropped token.
        n_experts: E (for the legend and to check the ids).
        gate_T: each token's gate weight, shown on hover (optional).
        legend: add a line of expert swatches with each expert's token count.
        monospace: a fixed-width font (for code); False uses the notebook's font.

    Returns:
        An HTML string (a <div>).
    """
    tokens = list(tokens)
    experts = [int(e) for e in _as_list(expert_T, "expert_T")]
    gates = None if gate_T is None else [float(g) for g in _as_list(gate_T, "gate_T")]
    if n_experts < 1:
        raise ValueError(f"n_experts must be >= 1, got {n_experts}")
    if len(experts) != len(tokens) or (gates is not None and len(gates) != len(tokens)):
        raise ValueError(
            f"got {len(tokens)} tokens, {len(experts)} experts"
            + ("" if gates is None else f" and {len(gates)} gates")
            + ": one each per token"
        )
    bad = [e for e in experts if not -1 <= e < n_experts]
    if bad:
        raise ValueError(f"expert ids must be in [-1, {n_experts}), got {bad[:5]}")
    if not all(isinstance(t, str) for t in tokens):
        raise TypeError("tokens must be strings")
    spans = []
    for i, (tok, e) in enumerate(zip(tokens, experts)):
        bg = DROPPED_COLOUR if e < 0 else expert_colour(e)
        style = _SPAN.format(bg=bg, fg=text_colour(bg)) + ("" if monospace else "padding:1px 2px;")
        hover = f"token {i}: {'dropped' if e < 0 else f'expert {e}'}"
        if gates is not None:
            hover += f", gate {gates[i]:.3f}"
        if e < 0:
            style += "text-decoration:line-through;"
        # a word's surrounding spaces stay uncoloured, so words read apart; a token that is
        # only whitespace (a space, a newline in code) keeps its colour
        core = tok.strip() or tok
        lead, trail = (tok[: tok.index(core)], tok[tok.index(core) + len(core) :])
        spans.append(
            f'{html.escape(lead)}<span style="{style}" title="{html.escape(hover)}" '
            f'data-expert="{e}">{html.escape(core)}</span>{html.escape(trail)}'
        )
    box = (_MONO if monospace else "") + _BOX
    body = f'<div class="minimoe-tokens" style="{box}">{"".join(spans)}</div>'
    if not legend:
        return body
    counts = [experts.count(e) for e in range(n_experts)]
    chip = "display:inline-block;padding:0 5px;margin:0 4px 3px 0;white-space:nowrap;"
    swatches = [
        f'<span style="{_SPAN.format(bg=expert_colour(e), fg=text_colour(expert_colour(e)))}'
        f'{chip}" title="expert {e}: {counts[e]} tokens">expert {e} · {counts[e]}</span>'
        for e in range(n_experts)
        if counts[e]
    ]
    if -1 in experts:
        swatches.append(
            f'<span style="{_SPAN.format(bg=DROPPED_COLOUR, fg="#000000")}{chip}'
            f'text-decoration:line-through">dropped · {experts.count(-1)}</span>'
        )
    unused = [e for e in range(n_experts) if not counts[e]]
    if unused:
        swatches.append(
            f'<span style="color:#555">no tokens: expert{"s" if len(unused) > 1 else ""} '
            f"{_ranges(unused)}</span>"
        )
    head = f'<div style="font-size:12px;margin-bottom:6px">{"".join(swatches)}</div>'
    return f"<div>{head}{body}</div>"


def token_colouring(
    tokens: Sequence[str],
    expert_T: torch.Tensor | Sequence[int],
    n_experts: int,
    *,
    gate_T: torch.Tensor | Sequence[float] | None = None,
    legend: bool = True,
    monospace: bool = True,
) -> HTML:
    """`token_html` wrapped for display in a notebook (an `IPython.display.HTML`); same
    arguments."""
    return HTML(
        token_html(tokens, expert_T, n_experts, gate_T=gate_T, legend=legend, monospace=monospace)
    )
