"""Check for chapter 02 (routing), exercise 02.2: Shazeer's noisy top-k, in training and in
evaluation.

The learner's `noisy_logits(x_TD, w_gate_ED, w_noise_ED, eps_TE, training)` is compared with the
library's `minimoe.Router(noise="shazeer")` run on the same N(0, 1) draw (Shazeer et al. 2017,
arXiv 1701.06538, eq. 4: H(x) = x W_g + StandardNormal() * Softplus(x W_noise)), in both modes,
outputs and the gradients of both weight matrices. Named mistakes: noise left on in evaluation
(the makeMoE and nanoMoE bug; ColossalAI PR #419 fixed the same), no noise in training, the noise
scale without softplus or with exp, the noise scale taken from the gate weights, the standard
normal draw forgotten, weights cut off from the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.router import Router
from minimoe.testing import is_close

NOISY = Exercise("02.2", "noisy top-k, train vs eval", library=(Router,), weights=True)


# --- 02.2 noisy top-k, train vs eval ----------------------------------------------------------


def _noisy_variants() -> list[tuple[str, Callable]]:
    def noisy(scale: Callable, mode: str = "right") -> Callable:
        def fn(x, wg, wn, eps, training):
            clean = x @ wg.t()
            on = {"right": training, "always": True, "never": False}[mode]
            return clean + eps * scale(x, wg, wn) if on else clean

        return fn

    def softplus(x, wg, wn):
        return F.softplus(x @ wn.t())

    return [
        (
            "noise left on in evaluation: when training is False, return the clean logits "
            "x @ w_gate.T (makeMoE and nanoMoE have this bug)",
            noisy(softplus, "always"),
        ),
        (
            "no noise in training: add eps * softplus(x @ w_noise.T) when training is True",
            noisy(softplus, "never"),
        ),
        (
            "the noise scale must be positive: softplus(x @ w_noise.T), you used x @ w_noise.T "
            "without the softplus",
            noisy(lambda x, wg, wn: x @ wn.t()),
        ),
        (
            "used exp for the noise scale; Shazeer's is softplus(x @ w_noise.T) = log(1 + exp(.))",
            noisy(lambda x, wg, wn: torch.exp(x @ wn.t())),
        ),
        (
            "the noise scale comes from its own weights, softplus(x @ w_noise.T), not from the "
            "gate weights",
            noisy(lambda x, wg, wn: F.softplus(x @ wg.t())),
        ),
        (
            "forgot the standard normal draw: the noise is eps * softplus(x @ w_noise.T), with "
            "eps_TE given",
            lambda x, wg, wn, eps, training: x @ wg.t() + F.softplus(x @ wn.t()) * training,
        ),
    ]


def _library_noisy(x, wg, wn, seed: int, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps_TE, logits_TE) of `minimoe.Router(noise="shazeer")`, with its draw of N(0, 1) seeded."""
    E, D = wg.shape
    router = Router(D, E, noise="shazeer")
    with torch.no_grad():
        router.w_ED.copy_(wg)
        router.w_noise_ED.copy_(wn)
    router.train(training)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        eps_TE = torch.randn(x.shape[0], E)  # the same draw as the router's randn_like
        torch.manual_seed(seed)
        logits_TE, _ = router(x)
    return eps_TE, logits_TE


def check_noisy_logits(noisy_fn: Callable) -> None:
    """Check `noisy_logits(x_TD, w_gate_ED, w_noise_ED, eps_TE, training) -> logits_TE` against
    `minimoe.Router(noise="shazeer")` in training and in evaluation mode.

    Raises:
        AssertionError: naming the likely mistake when an answer is wrong.
    """
    g = make_generator(23)
    variants = _noisy_variants()
    n = 0
    for T, D, E in [(6, 8, 4), (1, 5, 3), (0, 4, 4), (5, 100, 6)]:
        x = torch.randn(T, D, generator=g)
        wg = torch.randn(E, D, generator=g) / D**0.5
        wn = torch.randn(E, D, generator=g) / D**0.5
        for training in (True, False):
            eps, expected = _library_noisy(x, wg, wn, seed=24 + n, training=training)
            n += 1
            case = f"x ({T}, {D}), E={E}, training={training}"
            args = (x.clone(), wg.clone(), wn.clone(), eps.clone(), training)
            out = NOISY.call(noisy_fn, *args, case=case)
            NOISY.expect_tensor(out, (T, E), torch.float32, case)
            diagnose(NOISY, out, expected.detach(), variants, args, case, atol=1e-5, rtol=1e-4)
    _check_noisy_gradient(noisy_fn)
    NOISY.passed(f"{n} cases in both modes, incl. T=0, D=100, and the gradients")


def _check_noisy_gradient(noisy_fn: Callable) -> None:
    """In training both weight matrices learn: compare their gradients with the library's."""
    g = make_generator(25)
    x, R = torch.randn(5, 6, generator=g), torch.randn(5, 3, generator=g)
    wg, wn = torch.randn(3, 6, generator=g) / 6**0.5, torch.randn(3, 6, generator=g) / 6**0.5
    eps, _ = _library_noisy(x, wg, wn, seed=26, training=True)
    router = Router(6, 3, noise="shazeer")
    with torch.no_grad():
        router.w_ED.copy_(wg)
        router.w_noise_ED.copy_(wn)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(26)
        (router(x)[0] * R).sum().backward()
    leaves = [wg.clone().requires_grad_(True), wn.clone().requires_grad_(True)]
    case = "weights with requires_grad=True, training=True"
    out = NOISY.call(noisy_fn, x, *leaves, eps, True, case=case)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise NOISY.fail(f"the logits are cut off from the weights' gradient on {case}")
    grads = torch.autograd.grad((out * R).sum(), leaves, allow_unused=True)
    for name, got, expected in zip(("w_gate", "w_noise"), grads, (router.w_ED, router.w_noise_ED)):
        if got is None or not bool(got.abs().sum() > 0):
            raise NOISY.fail(
                f"{name} gets no gradient on {case}: use the given tensors in differentiable "
                "ops (wrapping them in nn.Parameter or nn.Linear makes new, separate weights; "
                ".detach() cuts them off)"
            )
        if not is_close(got, expected.grad, 1e-5, 1e-4):
            raise NOISY.fail(
                f"the gradient of {name} differs from the library's on {case}: the noise scale "
                "softplus(x @ w_noise.T) must stay in the graph (no .detach()), so the router "
                "learns how much noise it wants"
            )
