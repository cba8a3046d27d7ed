"""The Triton kernels against the float64 oracle: outputs and every gradient, on awkward shapes.

Without a CUDA GPU the kernels run in Triton's CPU interpreter, which must be switched on before
they are defined: the root conftest.py sets TRITON_INTERPRET=1 for the whole test run. Every case
draws fresh inputs (its own seed) and runs with every buffer poisoned (NaN) first, so an element no
kernel wrote fails the comparison: torch's `fill_uninitialized_memory` (on with deterministic
algorithms) fills every `torch.empty` float tensor the launchers allocate with NaN.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from functools import partial

import pytest
import torch

pytest.importorskip("triton")

import minimoe.triton as mt  # noqa: E402
from minimoe import MoEConfig, MoELayer, loop_moe, reference_moe  # noqa: E402
from minimoe.testing import (  # noqa: E402
    assert_close,
    assert_matches_reference,
    make_experts_inputs,
    outputs_and_grads,
)
from minimoe.triton import common  # noqa: E402
from minimoe.triton.v2_grouped_gemm import align_slots, grouped_gemm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERP = DEVICE == "cpu"
FP16_TOL = dict(atol=2e-2, rtol=2e-2)


@pytest.fixture(autouse=True)
def _poisoned():
    """Every buffer torch.empty allocates starts as NaN (integers as their largest value)."""
    was_on, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()  # fmt: skip
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    assert torch.isnan(torch.empty(2)).all()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)
        torch.utils.deterministic.fill_uninitialized_memory = was_fill


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _routed(T, D, F, E, K, *, dtype=torch.float32, activation="swiglu", routing="topk", seed=0):
    x, e, g, p = make_experts_inputs(T, D, F, E, K, dtype, activation, routing, seed)
    move = (lambda t: t.to(DEVICE)) if DEVICE != "cpu" else (lambda t: t)
    w3 = None if p.w3_EFD is None else move(p.w3_EFD)
    return move(x), move(e), move(g), p._replace(w1_EFD=move(p.w1_EFD), w2_EDF=move(p.w2_EDF), w3_EFD=w3)  # fmt: skip


def _two_expert_block_routing(T: int, K: int, E: int) -> torch.Tensor:
    """Expert 0 gets 17 slots (a second block of 16 that is one row and 15 of padding), expert 1
    the rest, expert 2 .. E-1 nothing."""
    flat = torch.ones(T * K, dtype=torch.long)
    flat[torch.arange(17) * K] = 0  # the first choices of tokens 0..16: distinct per token
    return flat.view(T, K)


# (name, T, D, F, E, K, activation, keep probability or None, routing)
CASES = [
    ("empty_expert", 8, 16, 16, 4, 2, "swiglu", None, "empty_expert"),
    ("block_of_padding", 20, 16, 16, 3, 2, "swiglu", None, "two_expert_block"),
    ("T1", 1, 16, 32, 4, 2, "swiglu", None, "topk"),
    ("T0", 0, 16, 16, 4, 2, "swiglu", None, "topk"),
    ("ragged_D20_F12", 9, 20, 12, 4, 2, "swiglu", None, "topk"),
    ("D100", 5, 100, 16, 2, 1, "gelu", None, "topk"),
    ("K_equals_E", 6, 16, 16, 3, 3, "swiglu", None, "topk"),
    ("all_on_one_expert", 12, 16, 16, 4, 1, "swiglu", None, "one_expert"),
    ("drops", 12, 16, 24, 4, 2, "swiglu", 0.6, "topk"),
    ("drops_gelu", 12, 24, 16, 4, 2, "gelu", 0.6, "topk"),
    ("all_dropped", 4, 16, 16, 2, 2, "gelu", 0.0, "topk"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_moe_matches_reference_float32(case):
    name, T, D, F, E, K, act, p_keep, routing = case
    gen_routing = "topk" if routing == "two_expert_block" else routing
    x, e, g, p = _routed(T, D, F, E, K, activation=act, routing=gen_routing, seed=_seed(name))
    if routing == "two_expert_block":
        e = _two_expert_block_routing(T, K, E).to(x.device)
    keep = None
    if p_keep is not None:
        gen = torch.Generator().manual_seed(_seed(name) + 1)
        keep = (torch.rand(T, K, generator=gen) < p_keep).to(x.device)
    cfg = mt.KernelConfig(block_m=16, block_n=16, block_k=16, group_size_m=2, num_warps=1)
    assert_matches_reference(
        lambda *a: mt.triton_moe(*a, config=cfg), x, e, g, p, keep
    )  # fmt: skip


@pytest.mark.parametrize("act", ["swiglu", "gelu"])
def test_triton_moe_float16(act):
    x, e, g, p = _routed(10, 32, 32, 4, 2, dtype=torch.float16, activation=act, seed=_seed(act))
    keep = torch.rand(10, 2, generator=torch.Generator().manual_seed(3)) < 0.8
    y, grads = outputs_and_grads(mt.triton_moe, x, e, g, p, keep.to(x.device))
    y_ref, grads_ref = outputs_and_grads(reference_moe, x, e, g, p, keep.to(x.device))
    assert y.dtype == torch.float16
    assert_close(y, y_ref, name="y", **FP16_TOL)
    for name, a, b in zip(["x", "gate", "w1", "w2", "w3"], grads, grads_ref):
        assert_close(a, b, name=f"grad {name}", **FP16_TOL)


def test_forward_ladder_agrees_with_reference():
    x, e, g, p = _routed(9, 20, 12, 4, 2, seed=_seed("ladder"))
    keep = (torch.arange(18).view(9, 2) % 5 != 0).to(x.device)
    y = mt.fused_experts_v3(x, e, g, p, keep, config=mt.KernelConfig(16, 16, 16, 1, 1, 1))
    assert_close(y, reference_moe(x, e, g, p, keep), atol=1e-5, rtol=1e-4, name="v3")
    out = torch.full_like(y, float("nan"))
    assert mt.fused_experts_v3(x, e, g, p, out=out) is out
    assert_close(out, reference_moe(x, e, g, p), atol=1e-5, rtol=1e-4, name="v3 out=")


def test_matmul_v1():
    gen = torch.Generator().manual_seed(_seed("v1"))
    a = torch.randn(20, 36, generator=gen).to(DEVICE)
    w = torch.randn(40, 36, generator=gen).to(DEVICE)  # b = w.t(): a strided view
    out = torch.full((20, 40), float("nan"), device=DEVICE)
    c = mt.matmul_v1(a, w.t(), block_m=16, block_n=32, block_k=16, out=out)
    assert c is out
    assert_close(c, a.double() @ w.double().t(), atol=1e-4, rtol=1e-4, name="c")
    c16 = mt.matmul_v1(a[:1].half(), w.t().half(), block_m=16, block_n=16, block_k=16)
    assert_close(c16, a[:1].double() @ w.double().t(), atol=5e-2, rtol=2e-2, name="c fp16")
    with pytest.raises(ValueError, match="power of two"):
        mt.matmul_v1(a, w.t(), block_m=12)
    with pytest.raises(ValueError, match=r"\(R, I\) @ \(I, O\)"):
        mt.matmul_v1(a, w)


def test_grouped_gemm_v2_slot_order_and_drops():
    x, e, _, p = _routed(7, 20, 12, 4, 2, routing="empty_expert", seed=_seed("v2"))
    keep = torch.tensor([[True, False]] + [[True, True]] * 6, device=x.device)
    out = torch.full((14, 12), float("nan"), device=x.device)
    got = mt.grouped_gemm_v2(x, p.w1_EFD, e, keep, config=mt.KernelConfig(16, 16, 16), out=out)
    assert got is out
    rows = [x[n // 2].double() @ p.w1_EFD[e.view(-1)[n]].double().t() for n in range(14)]
    want = torch.stack(rows) * keep.reshape(-1, 1)
    assert_close(got, want, atol=1e-5, rtol=1e-4, name="out_NO")


def test_poisoning_catches_a_skipped_block():
    """The poison makes the comparisons able to fail: a kernel that skips its last block of
    rows leaves NaN behind, and the comparison with the oracle reports it."""
    x, e, _, p = _routed(8, 16, 16, 2, 2, routing="one_expert", seed=_seed("poison"))
    cfg = mt.KernelConfig(16, 16, 16)
    layout = align_slots(e, None, 2, cfg.block_m)
    short = layout._replace(n_padded=layout.n_padded - cfg.block_m)  # the last block skipped
    out = torch.empty((16, 16), dtype=x.dtype, device=x.device)  # NaN: the fixture poisons it
    grouped_gemm(x, p.w1_EFD, out, short, cfg, a_row_div=2)
    want = torch.stack([x[n // 2] @ p.w1_EFD[e.view(-1)[n]].t() for n in range(16)])
    with pytest.raises(AssertionError, match="NaN"):
        assert_close(out, want, name="out")


def test_align_block_size_hand_computed():
    expert_TK = torch.tensor([[2, 0], [0, 2], [2, 1]])
    ids, experts, n = mt.align_block_size(expert_TK, None, 3, 4)
    assert ids.tolist() == [1, 2, 6, 6, 5, 6, 6, 6, 0, 3, 4, 6]
    assert experts.tolist() == [0, 1, 2] and n == 12
    keep = torch.tensor([[True, False], [True, True], [False, True]])
    ids, experts, n = mt.align_block_size(expert_TK, keep, 4, 2)  # expert 3 empty, two dropped
    assert ids.tolist() == [2, 6, 5, 6, 0, 3] and experts.tolist() == [0, 1, 2] and n == 6
    layout = align_slots(expert_TK, keep, 4, 2)
    assert layout.expert_starts.tolist() == [0, 2, 4, 6, 6]
    assert (layout.sorted_ids[6:] == 6).all()  # the worst-case tail is all sentinel
    ids, experts, n = mt.align_block_size(torch.zeros(0, 2, dtype=torch.long), None, 3, 4)
    assert ids.numel() == experts.numel() == n == 0
    with pytest.raises(ValueError, match="expert ids"):
        mt.align_block_size(expert_TK, None, 2, 4)


def test_deterministic_forward_and_backward():
    x, e, g, p = _routed(12, 16, 16, 4, 2, seed=_seed("determinism"))
    first = outputs_and_grads(mt.triton_moe, x, e, g, p)
    second = outputs_and_grads(mt.triton_moe, x, e, g, p)
    for a, b in zip([first[0], *first[1]], [second[0], *second[1]]):
        assert torch.equal(a, b)


def test_moe_layer_trains_like_the_loop():
    cfg = MoEConfig(d_model=16, d_ff=16, n_experts=4, top_k=2, capacity_formula="deepspeed",
                    capacity_factor=1.0)  # fmt: skip
    torch.manual_seed(_seed("layer") % 2**31)
    ours, loop = MoELayer(cfg, experts_fn=mt.triton_moe), MoELayer(cfg, experts_fn=loop_moe)
    loop.load_state_dict(ours.state_dict())
    ours.to(DEVICE), loop.to(DEVICE)
    x, target = torch.randn(2, 8, 16, device=DEVICE), torch.randn(2, 8, 16, device=DEVICE)
    losses = {}
    for name, layer in [("triton", ours), ("loop", loop)]:
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        before = ((layer(x)[0] - target) ** 2).mean()
        opt.zero_grad()
        before.backward()
        opt.step()
        losses[name] = (before.item(), ((layer(x)[0] - target) ** 2).mean().item())
    assert losses["triton"][1] < losses["triton"][0], losses
    assert abs(losses["triton"][0] - losses["loop"][0]) < 1e-5
    assert abs(losses["triton"][1] - losses["loop"][1]) < 1e-4
    for (n, a), b in zip(ours.named_parameters(), loop.parameters()):
        assert_close(a, b, atol=1e-5, rtol=1e-4, name=n)


def test_clear_errors(monkeypatch):
    x, e, g, p = _routed(4, 16, 16, 2, 2, seed=1)
    with pytest.raises(TypeError, match="float32"):
        mt.triton_moe(x.double(), e, g.double(), p._replace(
            w1_EFD=p.w1_EFD.double(), w2_EDF=p.w2_EDF.double(), w3_EFD=p.w3_EFD.double()))  # fmt: skip
    with pytest.raises(TypeError, match="KernelConfig"):
        mt.triton_moe(x, e, g, p, config={"block_m": 16})
    with pytest.raises(ValueError, match="expert ids"):
        mt.triton_moe(x, e + 5, g, p)
    with pytest.raises(ValueError, match="block_k"):
        mt.KernelConfig(block_k=8)
    with pytest.raises(ValueError, match="out must be"):
        mt.fused_experts_v3(x, e, g, p, out=torch.empty(3, 16, device=x.device))
    with pytest.raises(ValueError, match="out must be"):
        mt.grouped_gemm_v2(x, p.w1_EFD, e, out=torch.empty(8, 16, device=x.device).half())
    if INTERP:
        bf = p._replace(w1_EFD=p.w1_EFD.bfloat16(), w2_EDF=p.w2_EDF.bfloat16(), w3_EFD=p.w3_EFD.bfloat16())  # fmt: skip
        with pytest.raises(TypeError, match="the interpreter has no bfloat16"):
            mt.triton_moe(x.bfloat16(), e, g.bfloat16(), bf)
        monkeypatch.setattr(common, "INTERPRETED", False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 .* before the kernels"):
            mt.triton_moe(x, e, g, p)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(RuntimeError, match="Triton needs Linux"):
        mt.matmul_v1(x, x.t())


def test_import_without_triton_then_clear_error():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, minimoe.triton as mt\n"
        "print(mt.align_block_size(torch.tensor([[1, 0]]), None, 2, 16).n_padded)\n"
        "try:\n    mt.matmul_v1(torch.ones(2, 2), torch.ones(2, 2))\n"
        "except ImportError as err:\n    print('ERR', err)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("32") and "ERR Triton needs Linux" in proc.stdout, proc.stdout


def test_ladder_command_runs_each_version(capsys):
    from minimoe.triton.__main__ import main

    for version in ("1", "2", "3", "4"):
        assert main([version, "--T", "4", "--D", "16", "--F", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("vs the float64 oracle" in line for line in lines)
    assert all(float(line.split("max abs diff ")[1].split()[0]) < 1e-4 for line in lines)


def test_each_rung_runs_as_a_module_and_the_package_loads_names_on_use():
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "minimoe.triton.v2_grouped_gemm", "--T", "3", "--D", "16"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("version 2 on") and "Warning" not in proc.stderr, proc.stderr
    code = (
        "import sys, minimoe.triton as mt\n"
        "assert 'triton' not in sys.modules, 'importing the package imported triton'\n"
        "assert not [m for m in sys.modules if m.startswith('minimoe.triton.v')]\n"
        "assert mt.KernelConfig and 'triton' not in sys.modules  # the config needs no Triton\n"
        "assert callable(mt.triton_moe) and 'minimoe.triton.v4_backward' in sys.modules\n"
        "assert mt.kernels.fused_up_kernel is sys.modules['minimoe.triton.v3_fused_experts'].fused_up_kernel\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'ops'"):
        mt.ops  # noqa: B018


def test_ladder_command_fails_on_a_wrong_result(capsys):
    from minimoe.triton.common import ladder_inputs, validate_then_time

    args, (x, *_) = ladder_inputs(1, ["--T", "2", "--D", "16"])
    assert validate_then_time(1, args, lambda: [x], [x.double()]) == 0
    assert validate_then_time(1, args, lambda: [x + 1e-3], [x.double()]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "FAILED" not in out[0] and "FAILED" in out[1] and "result 0" in out[1]


def test_configs():
    configs = mt.available_configs()
    assert {"default", "interpreter", "decode", "medium", "prefill"} <= configs.keys()
    assert mt.tuned_config(1, 4096, 14336, 8, 2, "cuda") == configs["decode"]
    assert mt.tuned_config(16384, 2048, 768, 128, 8, "cuda") == configs["prefill"]
    assert mt.tuned_config(16384, 64, 64, 4, 2, "cpu") == configs["interpreter"]
    assert mt.default_config("cpu") == configs["interpreter"]


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU: the interpreter cases cover CPU"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ["swiglu", "gelu"])
def test_gpu_matches_reference(dtype, act):
    torch.backends.cuda.matmul.allow_tf32 = False  # the oracle comparison needs exact float32
    x, e, g, p = _routed(300, 128, 96, 8, 2, dtype=dtype, activation=act, seed=_seed(str(dtype)))
    keep = (torch.rand(300, 2, generator=torch.Generator().manual_seed(0)) < 0.9).cuda()
    for cfg in [mt.default_config("cuda"), mt.tuned_config(300, 128, 96, 8, 2, "cuda")]:
        if dtype == torch.float32:
            assert_matches_reference(partial(mt.triton_moe, config=cfg), x, e, g, p, keep)
            continue
        y, grads = outputs_and_grads(partial(mt.triton_moe, config=cfg), x, e, g, p, keep)
        y_ref, grads_ref = outputs_and_grads(reference_moe, x, e, g, p, keep)
        tol = dict(atol=5e-2, rtol=5e-2) if dtype == torch.bfloat16 else FP16_TOL
        assert_close(y, y_ref, name="y", **tol)
        for name, a, b in zip(["x", "gate", "w1", "w2", "w3"], grads, grads_ref):
            assert_close(a, b, name=f"grad {name}", **tol)
