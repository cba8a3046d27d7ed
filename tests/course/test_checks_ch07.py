"""The chapter 07 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
lists of variants), so these tests show that every hint a check gives is reachable.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import assert_check_cells_match, fails_with, not_done

from minimoe.course.checks.ch07_specialise import check_specialisation
from minimoe.course.checks.ch07_train import check_train_step

# --- 07.2 the specialisation measure -------------------------------------------------------------


def specialisation(counts_CE, *, log=torch.log, what="mi", norm_axis=1, raw=False, skip_zeros=True,
                   wrong_marginals=False, guard=True, dtype=torch.float64, h_log=None):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake (`h_log`: the log of the
    entropies, when it differs from the MI's)."""
    c = counts_CE.to(dtype)
    total = c.sum()
    if guard and total == 0:
        return 0.0, 0.0
    p = c if raw else c / total
    p_c, p_e = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    if wrong_marginals:
        p_c, p_e = p.sum(0), p.sum(1)
        p_c, p_e = p_c[:, None], p_e[None, :]

    def plogq(a, b, log=log):
        return torch.where(a > 0, a * log(b), 0.0).sum() if skip_zeros else (a * log(b)).sum()

    h_class = -plogq(p_c, p_c, h_log or log)
    h_expert = -plogq(p_e, p_e, h_log or log)
    mi = plogq(p, p / (p_c * p_e))
    if what == "conditional":
        mi = h_class - mi
    elif what == "joint":
        mi = -plogq(p, p)
    elif what == "h_class":
        mi = h_class
    h = h_class if norm_axis == 1 else h_expert
    if guard and h == 0:
        return float(mi), 0.0
    return float(mi), float(mi / h)


def spec_with(**kw):
    return lambda counts: specialisation(counts, **kw)


def test_specialisation_passes(capsys) -> None:
    check_specialisation(specialisation)
    check_specialisation(spec_with(dtype=torch.float32))  # float32 is precise enough
    check_specialisation(lambda c: tuple(torch.tensor(v) for v in specialisation(c)))  # 0-d tensors
    out = capsys.readouterr().out
    assert "✓ Exercise 07.2 (the specialisation measure): passed" in out


def test_specialisation_with_xlogy_passes() -> None:
    """The entropies written with torch.xlogy, a different right way."""

    def via_entropies(counts):
        p = counts.double() / max(int(counts.sum()), 1)

        def h(q):
            return float(-torch.xlogy(q, q).sum())

        h_c, h_e, h_ce = h(p.sum(1)), h(p.sum(0)), h(p)
        mi = h_c + h_e - h_ce
        return mi, (mi / h_c if h_c > 0 else 0.0)

    check_specialisation(via_entropies)


@pytest.mark.parametrize(
    "answer, words",
    [
        (spec_with(log=torch.log2), ["base 2", "nats"]),
        (spec_with(log=torch.log10), ["base 10"]),
        (spec_with(what="conditional"), ["H(class | expert)"]),
        (spec_with(raw=True), ["raw counts", "counts.sum()"]),
        (spec_with(norm_axis=0), ["H(expert)"]),
        (spec_with(what="joint"), ["joint entropy"]),
        (spec_with(what="h_class"), ["largest the MI can be"]),
        (spec_with(skip_zeros=False), ["0 * log(0)", "p > 0"]),
        (spec_with(guard=False), ["0 / 0", "return 0.0"]),
        (lambda c: torch.tensor(specialisation(c)), ["two numbers"]),
        (lambda c: specialisation(c)[0], ["two numbers"]),
        (lambda c: None, ["forget the `return`"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_specialisation_wrong(answer, words) -> None:
    fails_with(check_specialisation, answer, "Exercise 07.2", *words)


def test_specialisation_wrong_axes_crash_names_the_marginals() -> None:
    """Summing the marginals over the wrong axes fails on a 5 x 4 table: the hint says which."""
    fails_with(check_specialisation, spec_with(wrong_marginals=True), "p.sum(1)", "(C, 1)")


def test_specialisation_wrong_axes_on_a_square_table() -> None:
    """On a square table the wrong marginals run and give wrong values: named as well."""
    import minimoe.course.checks.ch07_specialise as ch

    square = [case for case in ch._cases() if case[1].shape[0] == case[1].shape[1]]
    wrong = spec_with(wrong_marginals=True)
    for case, counts in square[:1]:
        got = torch.tensor(wrong(counts), dtype=torch.float64)
        hints = [h for h, fn in ch._variants() if ch.is_close(got, fn(counts), ch.ATOL, ch.RTOL)]
        assert any("wrong axes" in h for h in hints), case


def test_specialisation_unknown_mistake_reports_both_values() -> None:
    message = fails_with(check_specialisation, lambda c: (1.01 * specialisation(c)[0], 0.5))
    assert "expected (mi=" in message


def test_specialisation_negative_mi_is_named() -> None:
    def flipped(counts):
        mi, norm = specialisation(counts)
        return -mi - 0.1, norm

    fails_with(check_specialisation, flipped, "never negative")


def test_reference_values_by_hand() -> None:
    """The check's reference on its first diagonal case: MI = H(class)."""
    counts = torch.diag(torch.tensor([40, 25, 10, 5]))
    p = torch.tensor([40, 25, 10, 5]) / 80
    h = -sum(float(q) * math.log(float(q)) for q in p)
    mi, norm = specialisation(counts)
    assert mi == pytest.approx(h) and norm == pytest.approx(1.0)


# --- 07.1 the training step ------------------------------------------------------------------------


def train_step(model, optimizer, x_BS, y_BS, aux_coef, z_coef, *, fold=None, forget_z=False,
               forget_aux=False, zero_grad=True, layer_sum=False, no_coef=False, item=True,
               report_coef=False, step=True, zero_after_backward=False):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    model.train()
    if zero_grad:
        optimizer.zero_grad()
    logits_BSV, results = model(x_BS)
    lm = F.cross_entropy(logits_BSV.reshape(-1, logits_BSV.shape[-1]), y_BS.reshape(-1))
    agg = torch.sum if layer_sum else torch.mean
    aux = agg(torch.stack([r.aux_loss for r in results]))
    z = agg(torch.stack([r.z_loss for r in results]))
    a, c = (1.0, 1.0) if no_coef else (aux_coef, z_coef)
    total = lm + (0 if forget_aux else a * aux) + (0 if forget_z else c * z)
    total.backward()
    if zero_after_backward:
        optimizer.zero_grad()
    if step:
        optimizer.step()
    reported = {None: lm, "total": total, "lm+aux": lm + aux}[fold]
    out = (reported, aux * aux_coef if report_coef else aux, z)
    return tuple(v.item() for v in out) if item else out


def evaluate_loss(model, x_BS, y_BS, *, eval_mode=True, restore=True, always_train=False,
                  fold=False, no_grad=True):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    was_training = model.training
    if eval_mode:
        model.eval()
    with torch.set_grad_enabled(not no_grad):
        logits_BSV, results = model(x_BS)
        loss = F.cross_entropy(logits_BSV.reshape(-1, logits_BSV.shape[-1]), y_BS.reshape(-1))
        if fold:
            loss = loss + torch.stack([r.aux_loss for r in results]).mean()
    if always_train:
        model.train()
    elif restore:
        model.train(was_training)
    return loss.item() if no_grad else loss


def step_with(**kw):
    return lambda *args: train_step(*args, **kw)


def eval_with(**kw):
    return lambda *args: evaluate_loss(*args, **kw)


def test_train_step_passes(capsys) -> None:
    check_train_step(train_step, evaluate_loss)
    msg = "✓ Exercise 07.1 (training step and evaluation): passed"
    assert msg in capsys.readouterr().out


def test_train_step_library_pieces_pass() -> None:
    """Written with the library's lm_loss and router_losses, and zero_grad(set_to_none=False)."""
    from minimoe.lm.train import lm_loss, router_losses

    def step(model, optimizer, x_BS, y_BS, aux_coef, z_coef):
        optimizer.zero_grad(set_to_none=False)
        logits_BSV, results = model(x_BS)
        lm = lm_loss(logits_BSV, y_BS)
        aux, z = router_losses(results, lm)
        (lm + aux_coef * aux + z_coef * z).backward()
        optimizer.step()
        return lm.detach(), aux.detach(), z.detach()  # 0-d tensors without a graph are fine

    check_train_step(step, evaluate_loss)


@pytest.mark.parametrize(
    "answer, words",
    [
        (step_with(fold="total"), ["folded into the reported loss", "the total"]),
        (step_with(fold="lm+aux"), ["folded into the reported loss"]),
        (step_with(forget_z=True), ["z-loss is missing"]),
        (step_with(forget_aux=True), ["aux loss is missing"]),
        (step_with(forget_z=True, forget_aux=True), ["only the lm loss"]),
        (step_with(zero_grad=False), ["zero_grad()"]),
        (step_with(no_coef=True), ["coefficients are missing"]),
        (step_with(layer_sum=True), ["sum over the MoE layers"]),
        (step_with(report_coef=True), ["multiplied by its coefficient"]),
        (step_with(step=False), ["did not change", "optimizer.step()"]),
        (step_with(zero_after_backward=True), ["did not change"]),
        (step_with(item=False), ["requires grad", ".item()"]),
        (lambda *a: train_step(*a)[0], ["three numbers"]),
        (lambda *a: None, ["returned None"]),
        (lambda *a: (lambda lm, aux, z: (lm, z, aux))(*train_step(*a)), ["swapped"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_train_step_wrong(answer, words) -> None:
    fails_with(lambda fn: check_train_step(fn, evaluate_loss), answer, "Exercise 07.1", *words)


@pytest.mark.parametrize(
    "answer, words",
    [
        (eval_with(eval_mode=False), ["train mode", "model.eval()"]),
        (eval_with(restore=False), ["left the model in eval mode"]),
        (eval_with(always_train=True), ["was_training"]),
        (eval_with(fold=True), ["cross-entropy alone"]),
        (eval_with(no_grad=False), ["requires grad"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_evaluate_wrong(answer, words) -> None:
    fails_with(lambda fn: check_train_step(train_step, fn), answer, "Exercise 07.1", *words)


def test_train_step_unknown_mistake_reports_the_distance() -> None:
    def clipped(model, optimizer, x_BS, y_BS, aux_coef, z_coef):
        optimizer.zero_grad()
        logits_BSV, results = model(x_BS)
        lm = F.cross_entropy(logits_BSV.reshape(-1, 256), y_BS.reshape(-1))
        aux = torch.stack([r.aux_loss for r in results]).mean()
        z = torch.stack([r.z_loss for r in results]).mean()
        (lm + aux_coef * aux + z_coef * z).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        optimizer.step()
        return lm.item(), aux.item(), z.item()

    fails_with(lambda fn: check_train_step(fn, evaluate_loss), clipped, "moved by up to")


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/07 calls its check, and its title is the check's."""
    from minimoe.course.checks import ch07_specialise
    from minimoe.course.checks import ch07_train as ch07

    assert_check_cells_match(
        ["07_training.ipynb"],
        (ch07.STEP, ch07_specialise.SPECIALISE),
        "from minimoe.course.checks.ch07_",
    )


@pytest.mark.parametrize(
    "answer, words",
    [
        (spec_with(log=torch.log2, h_log=torch.log), ["two bases mixed", "MI is in bits", "1.443"]),
        (spec_with(h_log=torch.log2), ["two bases mixed", "H(class) in bits", "ln 2 = 0.693"]),
        (spec_with(log=torch.log10, h_log=torch.log), ["two bases mixed", "base 10", "0.434"]),
        (spec_with(h_log=torch.log10), ["two bases mixed", "base 10", "2.303"]),
    ],
)
def test_specialisation_mixed_log_bases_are_named(answer, words) -> None:
    message = fails_with(check_specialisation, answer, "Exercise 07.2", *words)
    assert "expected (mi=" not in message


def test_specialisation_a_log_ratio_elsewhere_is_recognised() -> None:
    """A value off by a change of log base, in no named variant's way, is named by its ratio."""

    def answer(counts):
        mi, norm = specialisation(counts)
        return mi / math.log(2), norm

    fails_with(check_specialisation, answer, "base 2 (bits)")  # both in bits: a named variant

    def normalised_in_bits_only(counts):  # no named variant: the ratio alone names it
        mi, norm = specialisation(counts)
        return mi, norm * math.log(2) if mi > 0.2 else norm

    fails_with(check_specialisation, normalised_in_bits_only, "ln 2 = 0.693")


def test_specialisation_refuses_the_library() -> None:
    from minimoe.lm.specialise import mutual_information, normalised_mutual_information

    def wraps(counts):
        return mutual_information(counts), normalised_mutual_information(counts)

    fails_with(check_specialisation, wraps, "Exercise 07.2", "calls the library's own")
    fails_with(check_specialisation, mutual_information, "library's own `mutual_information`")
