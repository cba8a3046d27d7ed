"""Token colouring and the one expert palette: escaped, whitespace kept, readable, consistent."""

import html
import re

import pytest
import torch
from IPython.display import HTML

from minimoe.viz._widgets import (
    PALETTE_SIZE,
    contrast_ratio,
    expert_colour,
    expert_colours,
    text_colour,
)
from minimoe.viz.batches import routing_batch, token_batch
from minimoe.viz.tokens import token_colouring, token_html

SPAN = re.compile(r'<span style="background:(#[0-9A-F]{6});color:(#[0-9A-F]{6});[^"]*" '
                  r'title="([^"]*)" data-expert="(-?\d+)">(.*?)</span>', re.S)  # fmt: skip


def _text(h: str) -> str:
    """What a browser shows of the token box: tags removed, entities decoded."""
    box = h[h.index('class="minimoe-tokens"') :]
    box = box[box.index(">") + 1 :]
    return html.unescape(re.sub(r"<[^>]+>", "", box))


def test_html_is_escaped():
    tokens = ["<script>", "a & b", '"q"', "</div>"]
    h = token_html(tokens, [0, 1, 2, 3], 4, legend=False)
    assert "<script>" not in h and h.count("</div>") == h.count("<div")  # no injected tags
    assert "&lt;script&gt;" in h and "a &amp; b" in h and "&quot;q&quot;" in h
    assert _text(h) == "".join(tokens)


def test_whitespace_and_newlines_are_kept():
    code = "def f(x):\n    return x  # <2\n\n\tdone"
    tokens = list(code)
    h = token_html(tokens, [i % 5 for i in range(len(tokens))], 5)
    assert _text(h) == code
    assert "white-space:pre-wrap" in h
    words = ["The ", "cat ", "sat\n", "down"]
    assert _text(token_html(words, [0, 1, 0, 2], 3, monospace=False)) == "The cat sat\ndown"


def test_each_token_gets_its_experts_colour_and_a_readable_text_colour():
    h = token_html(["a", "b", "c", "d"], torch.tensor([0, 1, 0, 40]), 64, gate_T=[0.5, 0.25, 1, 0])
    spans = SPAN.findall(h)
    assert [s[4] for s in spans] == ["a", "b", "c", "d"]
    assert [s[0] for s in spans] == [expert_colour(e) for e in (0, 1, 0, 40)]
    assert spans[0][0] != spans[1][0] and spans[0][0] == spans[2][0]
    assert all(s[1] == text_colour(s[0]) for s in spans)
    assert spans[1][2] == "token 1: expert 1, gate 0.250"
    assert "expert 0 · 2" in h and "no tokens: experts 2–39, 41–63" in h


def test_dropped_tokens_are_grey_and_struck_through():
    h = token_html(["x", "y"], [-1, 0], 2)
    assert "line-through" in SPAN.search(h).group(0) and "dropped · 1" in h


def test_token_colouring_wraps_the_html():
    shown = token_colouring(["a", "b"], [0, 1], 2, legend=False)
    assert isinstance(shown, HTML) and shown.data == token_html(["a", "b"], [0, 1], 2, legend=False)


def test_token_html_rejects_bad_input():
    with pytest.raises(ValueError, match="one each per token"):
        token_html(["a", "b"], [0], 2)
    with pytest.raises(ValueError, match="one each per token"):
        token_html(["a"], [0], 2, gate_T=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"in \[-1, 2\)"):
        token_html(["a"], [2], 2)
    with pytest.raises(ValueError, match="1-D"):
        token_html(["a"], torch.zeros(1, 1, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="strings"):
        token_html([1], [0], 2)
    assert "minimoe-tokens" in token_html([], [], 3)  # an empty sequence is fine


def test_palette_is_distinct_consistent_and_readable():
    colours = expert_colours(PALETTE_SIZE)
    assert len(set(colours)) == 64
    assert expert_colours(8) == colours[:8]  # an expert's colour does not depend on E
    assert expert_colour(64) == expert_colour(0)  # repeats after 64
    assert colours[:3] == ["#0072B2", "#E69F00", "#009E73"]  # Okabe-Ito first
    for c in colours:  # WCAG AA for normal text
        assert contrast_ratio(c, text_colour(c)) >= 4.5, c
    assert contrast_ratio("#000000", "#FFFFFF") == pytest.approx(21.0)
    with pytest.raises(ValueError):
        expert_colour(-1)


def test_batches_are_deterministic_and_named():
    assert torch.equal(token_batch("skewed", 16, 4, seed=2), token_batch("skewed", 16, 4, seed=2))
    assert not torch.equal(token_batch("random", 16, 4, 0), token_batch("random", 16, 4, 1))
    e, g = routing_batch("skewed", 64, 8, 2)
    load = torch.bincount(e.reshape(-1), minlength=8)
    assert load[0] > load[-1] and e.shape == g.shape == (64, 2)
    with pytest.raises(ValueError, match="not one of"):
        token_batch("zipf")
    with pytest.raises(ValueError, match="not one of"):
        routing_batch("zipf")
