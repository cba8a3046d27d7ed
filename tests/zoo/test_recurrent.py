"""The layerwise recurrent router (arXiv 2408.06793, eqs. 4-6) against the GRU written out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from minimoe.zoo import recurrent_router_step
from minimoe.zoo.reference import gru_router_loop
from tests.zoo._helpers import assert_all_close, value_and_grads


def _case(T=5, D=6, Z=4, E=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cell = nn.GRUCell(Z, Z).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen, dtype=dtype)
    h = torch.randn(T, Z, generator=gen, dtype=dtype)
    w_proj = torch.randn(Z, D, generator=gen, dtype=dtype) / D**0.5
    w_out = torch.randn(E, Z, generator=gen, dtype=dtype) / Z**0.5
    return x, h, w_proj, cell, w_out


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("T", [5, 1, 0])
def test_step_matches_loop_outputs_and_grads(dtype, atol, T):
    x, h, w_proj, cell, w_out = _case(T=T, dtype=dtype)
    params = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]

    def with_cell(ps):
        c = nn.GRUCell(cell.input_size, cell.hidden_size).to(dtype)
        for name, p in zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], ps):
            delattr(c, name)
            setattr(c, name, p)
        return c

    def fast(x, h, wp, wo, *ps):
        return torch.cat(recurrent_router_step(x, h, wp, with_cell(ps), wo), dim=1)

    def slow(x, h, wp, wo, *ps):
        return torch.cat(gru_router_loop(x, h, wp, with_cell(ps), wo), dim=1)

    ins = [x, h, w_proj, w_out, *params]
    y, g = value_and_grads(fast, *ins)
    y_ref, g_ref = value_and_grads(slow, *ins)
    assert y.dtype == dtype and y.shape == (T, 3 + 4)
    assert_all_close([y, *g], [y_ref, *g_ref], atol=atol, rtol=1e-5)


def test_no_state_means_zero_state():
    x, h, w_proj, cell, w_out = _case()
    a = recurrent_router_step(x, None, w_proj, cell, w_out)
    b = recurrent_router_step(x, torch.zeros_like(h), w_proj, cell, w_out)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=0, rtol=0)


def test_the_state_carries_over_layers():
    """Two layers with the same input: the second's logits depend on the first's state."""
    x, _, w_proj, cell, w_out = _case()
    logits1, h1 = recurrent_router_step(x, None, w_proj, cell, w_out)
    logits2, _ = recurrent_router_step(x, h1, w_proj, cell, w_out)
    assert not torch.allclose(logits1, logits2)


def test_bad_input():
    x, h, w_proj, cell, w_out = _case()
    with pytest.raises(TypeError, match="cell"):
        recurrent_router_step(x, h, w_proj, nn.GRU(4, 4), w_out)
    with pytest.raises(ValueError, match="w_proj_ZD"):
        recurrent_router_step(x, h, w_proj[:, :3], cell, w_out)
    with pytest.raises(ValueError, match="input_size"):
        recurrent_router_step(x, None, w_proj[:3], cell, w_out)
    with pytest.raises(ValueError, match="h_TZ"):
        recurrent_router_step(x, h[:2], w_proj, cell, w_out)
    with pytest.raises(ValueError, match="w_out_EZ"):
        recurrent_router_step(x, h, w_proj, cell, w_out[:, :2])
    with pytest.raises(TypeError, match="cell"):
        recurrent_router_step(x, h, w_proj, cell.float(), w_out)
