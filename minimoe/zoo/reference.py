"""Float64 loops that spell out each router of the zoo, one token (or slot) at a time: the oracles.

Slow on purpose and written from the papers' formulas with nothing shared with the fast code but
`minimoe.ffn` (one expert on one row); the tests compare outputs and gradients against them.
"""

from __future__ import annotations

import math

import torch

from minimoe.experts import ExpertParams, ffn


def _ffn64(x_D: torch.Tensor, params: ExpertParams, e: int) -> torch.Tensor:
    w3 = None if params.w3_EFD is None else params.w3_EFD[e].double()
    return ffn(
        x_D.double()[None],
        params.w1_EFD[e].double(),
        params.w2_EDF[e].double(),
        w3,
        params.activation,
    )[0]


def expert_choice_loop(probs_TE: torch.Tensor, capacity: int) -> tuple[list[list[int]], list[list]]:
    """Each expert's chosen tokens (a Python list per expert) and their scores (tensors)."""
    T, E = probs_TE.shape
    tokens, gates = [], []
    for e in range(E):
        col = [float(probs_TE[t, e]) for t in range(T)]
        # decreasing score, ties to the lower token index
        order = sorted(range(T), key=lambda t: (-col[t], t))[:capacity]
        tokens.append(order)
        gates.append([probs_TE[t, e] for t in order])
    return tokens, gates


def expert_choice_moe_loop(x_TD, token_EC, gate_EC, params: ExpertParams) -> torch.Tensor:
    """y[t] = sum over (e, c) with token_EC[e, c] = t of gate_EC[e, c] FFN_e(x[t]), in float64."""
    T, D = x_TD.shape
    rows = []
    for t in range(T):
        y_D = torch.zeros(D, dtype=torch.float64)
        for e in range(token_EC.shape[0]):
            for c in range(token_EC.shape[1]):
                if int(token_EC[e, c]) == t:
                    y_D = y_D + gate_EC[e, c].double() * _ffn64(x_TD[t], params, e)
        rows.append(y_D)
    return torch.stack(rows) if rows else torch.zeros(0, D, dtype=torch.float64)


def soft_moe_loop(x_TD, phi_DEC, params: ExpertParams) -> torch.Tensor:
    """Soft MoE (arXiv 2308.00951, eqs. 1-3) with explicit exponentials and sums, in float64."""
    T, D = x_TD.shape
    _, E, C = phi_DEC.shape
    x, phi = x_TD.double(), phi_DEC.double()
    logit = [[[x[t] @ phi[:, e, c] for c in range(C)] for e in range(E)] for t in range(T)]
    ys = {}
    for e in range(E):
        for c in range(C):
            m = max((float(logit[t][e][c].detach()) for t in range(T)), default=0.0)
            w = [torch.exp(logit[t][e][c] - m) for t in range(T)]
            z = sum(w)
            xs_D = sum((w[t] / z * x[t] for t in range(T)), torch.zeros(D, dtype=torch.float64))
            ys[e, c] = _ffn64(xs_D, params, e)
    rows = []
    for t in range(T):
        flat = [logit[t][e][c] for e in range(E) for c in range(C)]
        m = max(float(v.detach()) for v in flat)
        z = sum(torch.exp(v - m) for v in flat)
        y_D = torch.zeros(D, dtype=torch.float64)
        for e in range(E):
            for c in range(C):
                y_D = y_D + torch.exp(logit[t][e][c] - m) / z * ys[e, c]
        rows.append(y_D)
    return torch.stack(rows) if rows else torch.zeros(0, D, dtype=torch.float64)


def shared_routed_loop(x_TD, shared, expert_TK, gate_TK, routed) -> torch.Tensor:
    """sum_s FFN_s(x[t]) + sum_k gate[t, k] FFN_{expert[t, k]}(x[t]), token by token, float64."""
    T, D = x_TD.shape
    rows = []
    for t in range(T):
        y_D = torch.zeros(D, dtype=torch.float64)
        for s in range(shared.n_experts):
            y_D = y_D + _ffn64(x_TD[t], shared, s)
        for k in range(expert_TK.shape[1]):
            y_D = y_D + gate_TK[t, k].double() * _ffn64(x_TD[t], routed, int(expert_TK[t, k]))
        rows.append(y_D)
    return torch.stack(rows) if rows else torch.zeros(0, D, dtype=torch.float64)


def gru_router_loop(x_TD, h_TZ, w_proj_ZD, cell, w_out_EZ):
    """The recurrent router step with the GRU written out (torch's GRUCell equations), float64.

    r = sigma(W_ir a + b_ir + W_hr h + b_hr); z = sigma(W_iz a + b_iz + W_hz h + b_hz);
    n = tanh(W_in a + b_in + r * (W_hn h + b_hn)); h' = (1 - z) * n + z * h; a = W_proj x.
    """
    Z = cell.hidden_size
    Wi, Wh = cell.weight_ih.double().split(Z), cell.weight_hh.double().split(Z)
    bi, bh = cell.bias_ih.double().split(Z), cell.bias_hh.double().split(Z)
    sig = lambda v: 1.0 / (1.0 + torch.exp(-v))  # noqa: E731
    logits, states = [], []
    for t in range(x_TD.shape[0]):
        a = w_proj_ZD.double() @ x_TD[t].double()
        h = torch.zeros(Z, dtype=torch.float64) if h_TZ is None else h_TZ[t].double()
        r = sig(Wi[0] @ a + bi[0] + Wh[0] @ h + bh[0])
        z = sig(Wi[1] @ a + bi[1] + Wh[1] @ h + bh[1])
        n = torch.tanh(Wi[2] @ a + bi[2] + r * (Wh[2] @ h + bh[2]))
        h2 = (1 - z) * n + z * h
        states.append(h2)
        logits.append(w_out_EZ.double() @ h2)
    E = w_out_EZ.shape[0]
    if not states:
        return torch.zeros(0, E, dtype=torch.float64), torch.zeros(0, Z, dtype=torch.float64)
    return torch.stack(logits), torch.stack(states)


def expert_choice_capacity_loop(T: int, E: int, cf: float) -> int:
    """min(T, ceil(T cf / E)) by the paper's k = n c / e."""
    return min(T, math.ceil(T * cf / E))


def reroute_loop(probs_TE, expert_TK, capacity: int):
    """`minimoe.zoo.reroute.reroute_slots`, one slot at a time, as its docstring orders it."""
    T, E = probs_TE.shape
    K = expert_TK.shape[1]
    final = [[int(expert_TK[t, k]) for k in range(K)] for t in range(T)]
    keep = [[False] * K for _ in range(T)]
    held = [set(final[t]) for t in range(T)]
    load = [0] * E
    for t in range(T):  # round 0: the "position" policy
        for k in range(K):
            if load[final[t][k]] < capacity:
                load[final[t][k]] += 1
                keep[t][k] = True
    pending = {(t, k) for t in range(T) for k in range(K) if not keep[t][k]}
    for _ in range(E):
        for k in range(K):
            room = [capacity - load[e] for e in range(E)]  # room at the start of the sub-round
            asks = {}
            for t in range(T):
                if (t, k) not in pending:
                    continue
                options = [e for e in range(E) if e not in held[t] and room[e] > 0]
                if not options:
                    pending.discard((t, k))  # dropped for good
                    continue
                asks[t] = max(options, key=lambda e: (float(probs_TE[t, e]), -e))
            for t in sorted(asks):
                e = asks[t]
                if room[e] > 0:
                    room[e] -= 1
                    load[e] += 1
                    final[t][k] = e
                    keep[t][k] = True
                    held[t].add(e)
                    pending.discard((t, k))
    return torch.tensor(final, dtype=torch.int64).view(T, K), torch.tensor(keep).view(T, K)


def peer_loop(x_TD, w_query_QD, rows_ND, cols_ND, heads: int, top_k: int, params: ExpertParams):
    """PEER (arXiv 2407.04153) in float64, one token and one head at a time, scoring all E = n1 * n2
    experts exhaustively (expert i * n2 + j has the key [row_i ; col_j]): the top-K by score, a
    softmax over those K scores, and the heads' outputs summed."""
    T, D = x_TD.shape
    n1, n2 = rows_ND.shape[0], cols_ND.shape[0]
    d_key = w_query_QD.shape[0] // heads
    half = d_key // 2
    W = w_query_QD.double()
    y = []
    for t in range(T):
        x = x_TD[t].double()
        out = torch.zeros(D, dtype=torch.float64)
        for h in range(heads):
            q = W[h * d_key : (h + 1) * d_key] @ x
            scores = []
            for i in range(n1):
                for j in range(n2):
                    s = q[:half] @ rows_ND[i].double() + q[half:] @ cols_ND[j].double()
                    scores.append((s, i * n2 + j))
            best = sorted(scores, key=lambda pair: float(pair[0].detach()), reverse=True)[:top_k]
            weights = torch.softmax(torch.stack([s for s, _ in best]), dim=0)
            for w, (_, e) in zip(weights, best, strict=True):
                out = out + w * _ffn64(x, params, e)
        y.append(out)
    return torch.stack(y) if y else torch.zeros(0, D, dtype=torch.float64)
