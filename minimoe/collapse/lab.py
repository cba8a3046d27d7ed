"""The router-collapse lab: train the same small MoE with no balancing, then with each remedy.

    from minimoe.collapse.lab import run_lab, format_table
    print(format_table(run_lab()))

| setting            | what it changes                                       | source |
|--------------------|-------------------------------------------------------|--------|
| "no balancing"     | nothing: the router collapses onto a few experts      | Shazeer et al. 2017 §4 |
| "switch aux loss"  | + 0.3 × E·Σ f_e·P_e                                    | Switch Transformer, arXiv 2101.03961 eq. 4 |
| "z-loss"           | the aux loss above + 0.001 × mean(logsumexp(l)²)      | ST-MoE, arXiv 2202.08906 eq. 5 |
| "bias balancing"   | sigmoid gating; b_e += rate·sign(mean load − load_e), selection only | arXiv 2408.15664; DeepSeek-V3 |
| "capacity + drops" | capacity factor 1.25; tokens past it are dropped       | Switch Transformer, GShard |
| "over-balanced"    | the aux loss with a coefficient 100× too large (30)   | |

What each remedy does here (`python -m minimoe collapse-lab` prints the numbers):
- the aux loss spreads the tokens and lowers the validation loss;
- the z-loss does not balance: it keeps logsumexp of the logits (the z-loss itself) small,
  which keeps the router's softmax in a range where float32/bf16 rounding does no harm over long
  runs (ST-MoE); here it rides on top of the aux loss. It bounds logsumexp, not |logit|: a large
  z coefficient pushes every logit negative;
- bias balancing evens the load without any loss term, and never changes the gate weights;
- a capacity does NOT undo the collapse: it bounds what each expert processes, but the router
  still sends most tokens to the same experts, and the overflow is dropped (the drop rate);
- too strong an aux loss makes every token's router distribution uniform: the load is even,
  but tokens no longer go to the expert that suits them, and the validation loss rises.

Other routers (chapter 08's zoo: expert choice, Soft MoE, top-k warm-up, ...) plug in with
`Setting(..., router=name)`; `python -m minimoe zoo` runs them all here without balancing.

Left out: the language-model version of the lab (`minimoe.lm`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import torch

from minimoe.collapse.task import ClusterTask, CollapseModel, TaskConfig, make_task
from minimoe.config import MoEConfig


@dataclass(frozen=True)
class Setting:
    """One training recipe of the lab.

    Args:
        name: shown in tables and menus.
        aux_coef: weight of the Switch load-balancing loss in the training loss.
        z_coef: weight of the z-loss.
        gating: the gating convention ("switch": softmax, weights not renormalised; bias
            balancing needs "deepseek_v3", whose bias is selection-only).
        bias_rate: γ of aux-loss-free balancing (0 = off).
        capacity_factor: None = dropless; else the Megatron formula ceil(T·K/E·cf), drops by
            position.
        remedy: which knob `with_strength` turns ("aux", "z", "bias", "capacity" or "").
        note: one line on what to look for.
        router: the MoE layer, a name of `minimoe.zoo.layers.ROUTERS` ("token_choice" is
            `minimoe.MoELayer`); router_options: its extra keyword arguments.
    """

    name: str
    aux_coef: float = 0.0
    z_coef: float = 0.0
    gating: str = "switch"
    bias_rate: float = 0.0
    capacity_factor: float | None = None
    remedy: str = ""
    note: str = ""
    router: str = "token_choice"
    router_options: dict | None = None

    def __post_init__(self) -> None:
        if self.aux_coef < 0 or self.z_coef < 0 or self.bias_rate < 0:
            raise ValueError("aux_coef, z_coef and bias_rate must be >= 0")
        if self.bias_rate > 0 and self.gating != "deepseek_v3":
            raise ValueError("bias balancing needs gating='deepseek_v3' (a selection-only bias)")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0, got {self.capacity_factor}")

    @property
    def strength(self) -> float:
        """The value of this setting's remedy knob (0 for no remedy)."""
        return {
            "aux": self.aux_coef,
            "z": self.z_coef,
            "bias": self.bias_rate,
            "capacity": self.capacity_factor or 0.0,
        }.get(self.remedy, 0.0)

    def with_strength(self, value: float) -> Setting:
        """A copy with the remedy's knob set to `value` (the aux coefficient, the z coefficient,
        the bias rate or the capacity factor), renamed to show it."""
        knob = {"aux": "aux_coef", "z": "z_coef", "bias": "bias_rate"}
        knob["capacity"] = "capacity_factor"
        if self.remedy not in knob:
            raise ValueError(f"setting {self.name!r} has no remedy strength to set")
        return replace(self, name=f"{self.name} ({value:g})", **{knob[self.remedy]: value})


SETTINGS: tuple[Setting, ...] = (
    Setting("no balancing", note="a few experts take every token; the rest die"),
    Setting("switch aux loss", aux_coef=0.3, remedy="aux", note="the load spreads"),
    Setting(
        "z-loss",
        aux_coef=0.3,
        z_coef=1e-3,
        remedy="z",
        note="balance from the aux loss; the z-loss keeps logsumexp(logits) small",
    ),
    Setting(
        "bias balancing",
        gating="deepseek_v3",
        bias_rate=1e-2,
        remedy="bias",
        note="no loss term: a selection-only bias evens the load",
    ),
    Setting(
        "capacity + drops",
        capacity_factor=1.25,
        remedy="capacity",
        note="bounds what an expert processes, drops the rest; the router still collapses",
    ),
    Setting(
        "over-balanced",
        aux_coef=30.0,
        remedy="aux",
        note="even load, uniform router: tokens miss their expert, the loss rises",
    ),
)

# the baseline of "bias balancing": the same sigmoid gating with no remedy (it collapses too)
BASELINES: tuple[Setting, ...] = (
    Setting(
        "no balancing (sigmoid)",
        gating="deepseek_v3",
        note="the sigmoid gating of bias balancing, with no remedy: it collapses too",
    ),
)

STEPS = 400
BATCH = 256
LR = 3e-3
EVAL_EVERY = 20
GROUP = 64  # tokens per routing group of routers that route groups (Soft MoE's slots)


def get_setting(name: str | Setting) -> Setting:
    """A `Setting` from its name in `SETTINGS` (or the setting itself)."""
    if isinstance(name, Setting):
        return name
    for setting in SETTINGS + BASELINES:
        if setting.name == name:
            return setting
    raise ValueError(
        f"unknown setting {name!r}; choose from {[s.name for s in SETTINGS + BASELINES]}"
    )


@dataclass
class LabResult:
    """What one training run recorded (S = recorded steps; the statistics of each step are those
    of its training batch, before the update).

    Attributes:
        setting, seed, steps: what was run.
        load_SE: slots routed to each expert per step (before drops).
        kept_SE: slots each expert processed (after drops).
        entropy_H: mean per-token router entropy (nats; log E = undecided).
        load_entropy_H: entropy of the load shares (log E = even).
        max_over_mean_H, cv_H, dead_H, drop_H: the other collapse statistics.
        aux_H, z_H, max_logit_H: the Switch aux loss (whether or not it is trained on), the
            z-loss, and the largest |router logit|.
        train_loss_H: task loss (MSE / target variance).
        eval_steps, val_loss: validation loss (MSE / target variance) every few steps.
        final: statistics of the trained model on the validation tokens.
        seconds: wall time of the training.
    """

    setting: Setting
    seed: int
    steps: int
    load_SE: torch.Tensor
    kept_SE: torch.Tensor
    entropy_H: list[float] = field(default_factory=list)
    load_entropy_H: list[float] = field(default_factory=list)
    max_over_mean_H: list[float] = field(default_factory=list)
    cv_H: list[float] = field(default_factory=list)
    dead_H: list[int] = field(default_factory=list)
    drop_H: list[float] = field(default_factory=list)
    aux_H: list[float] = field(default_factory=list)
    z_H: list[float] = field(default_factory=list)
    max_logit_H: list[float] = field(default_factory=list)
    train_loss_H: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.setting.name


def build_model(setting: Setting, task: ClusterTask, seed: int) -> CollapseModel:
    """The lab's model for `setting`, its weights seeded by `seed`."""
    t = task.cfg
    cap = {} if setting.capacity_factor is None else {
        "capacity_formula": "megatron", "capacity_factor": setting.capacity_factor
    }  # fmt: skip
    moe_cfg = MoEConfig(
        d_model=t.d_model,
        d_ff=t.d_ff,
        n_experts=t.n_clusters,
        top_k=t.top_k,
        activation="gelu",
        gating=setting.gating,
        aux_loss="switch",
        **cap,
    )
    torch.manual_seed(seed)
    if setting.router == "token_choice":
        return CollapseModel(moe_cfg, task.mean_D)
    from minimoe.zoo.layers import make_moe_layer

    layer = make_moe_layer(
        setting.router, moe_cfg, group_size=GROUP, options=setting.router_options
    )
    return CollapseModel(moe_cfg, task.mean_D, layer=layer)


def _max_logit(r) -> float:
    """The largest |router logit| of a result (NaN for a router without logits)."""
    logits = r.routing.logits_TE if r.routing is not None else getattr(r, "logits", None)
    return float(logits.detach().abs().max()) if logits is not None else math.nan


@torch.no_grad()
def evaluate(model: CollapseModel, task: ClusterTask) -> dict:
    """Validation loss and routing statistics of `model` on the validation tokens (eval mode)."""
    was_training = model.training
    model.eval()
    pred_TD, r = model(task.x_val_TD)
    model.train(was_training)
    s = r.stats
    mean_routed = s.routed_E.double().mean().clamp_min(1e-12)
    return {
        "val_loss": float(((pred_TD - task.y_val_TD) ** 2).mean()) / task.target_var,
        "max_over_mean": s.max_over_mean,
        # the busiest expert's processed slots over the mean routed: <= cf under a capacity
        "kept_max_over_mean": float(s.load_E.double().max() / mean_routed),
        "dead_experts": s.dead_experts,
        "entropy": s.entropy,
        "load_entropy": s.load_entropy,
        "cv": s.cv,
        "drop_rate": s.drop_rate,
        "aux": float(r.aux_loss),
        "z": float(r.z_loss),
        "max_logit": _max_logit(r),
        "routed_E": s.routed_E.tolist(),
    }


def run_setting(
    name_or_setting: str | Setting,
    *,
    seed: int = 0,
    steps: int | None = None,
    record: bool = True,
    task: ClusterTask | None = None,
) -> LabResult:
    """Train the lab's model with one setting and record its routing at every step.

    Args:
        name_or_setting: a name from `SETTINGS`, or a `Setting`.
        seed: seeds the model's weights and the batches (the task's data has its own seed).
        steps: training steps (default `STEPS`).
        record: keep the per-step statistics (False: only `final`, slightly faster).
        task: the data (default `make_task()`).

    Returns:
        A `LabResult`.
    """
    setting = get_setting(name_or_setting)
    steps = STEPS if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    task = task or make_task(TaskConfig())
    model = build_model(setting, task, seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    batches = torch.Generator().manual_seed(seed + 10_000)
    E = task.cfg.n_clusters
    res = LabResult(setting, seed, steps, torch.zeros(0, E, dtype=torch.long), torch.zeros(0, E))
    loads, kept = [], []
    start = time.perf_counter()
    for step in range(steps):
        idx_B = torch.randint(0, task.x_train_TD.shape[0], (BATCH,), generator=batches)
        if hasattr(model.moe, "set_step"):  # a per-step schedule (top-k warm-up)
            model.moe.set_step(step, steps)
        pred_BD, r = model(task.x_train_TD[idx_B])
        task_loss = ((pred_BD - task.y_train_TD[idx_B]) ** 2).mean()
        loss = task_loss + setting.aux_coef * r.aux_loss + setting.z_coef * r.z_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if setting.bias_rate > 0:
            model.moe.router.update_bias(r.stats.routed_E, setting.bias_rate)
        if record:
            s = r.stats
            loads.append(s.routed_E)
            kept.append(s.load_E)
            res.entropy_H.append(s.entropy)
            res.load_entropy_H.append(s.load_entropy)
            res.max_over_mean_H.append(s.max_over_mean)
            res.cv_H.append(s.cv)
            res.dead_H.append(s.dead_experts)
            res.drop_H.append(s.drop_rate)
            res.aux_H.append(float(r.aux_loss.detach()))
            res.z_H.append(float(r.z_loss.detach()))
            res.max_logit_H.append(_max_logit(r))
            res.train_loss_H.append(float(task_loss.detach()) / task.target_var)
            if step % EVAL_EVERY == 0 or step == steps - 1:
                res.eval_steps.append(step)
                res.val_loss.append(evaluate(model, task)["val_loss"])
    res.seconds = time.perf_counter() - start
    if loads:
        res.load_SE, res.kept_SE = torch.stack(loads), torch.stack(kept)
    res.final = evaluate(model, task)
    return res


def run_lab(
    settings: list[str | Setting] | tuple | None = None,
    *,
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
    record: bool = True,
) -> list[LabResult]:
    """Run several settings (default: all of `SETTINGS`, in order) on the same task and seed.

    Args:
        settings: names or `Setting`s.
        seed: the training seed of every run.
        steps: training steps per run (default `STEPS`).
        progress: a tqdm bar over the settings, naming the one being trained (a run takes
            seconds, the whole lab up to a minute on a busy machine: the bar says it is alive).
        record: keep the per-step statistics.
    """
    chosen = [get_setting(s) for s in (SETTINGS if settings is None else settings)]
    task = make_task(TaskConfig())
    if not progress:
        return [run_setting(s, seed=seed, steps=steps, record=record, task=task) for s in chosen]
    from tqdm.auto import tqdm

    results = []
    with tqdm(total=len(chosen), desc="collapse lab", unit="setting") as bar:
        for s in chosen:
            bar.set_postfix_str(f"training {s.name}")
            results.append(run_setting(s, seed=seed, steps=steps, record=record, task=task))
            bar.update(1)
        bar.set_postfix_str("done")
    return results


def format_table(results: list[LabResult]) -> str:
    """A plain-text table: per setting, the final routing statistics on the validation tokens."""
    head = (
        f"{'setting':<18} {'max/mean':>8} {'kept m/m':>8} {'dead':>4} {'entropy':>7} "
        f"{'load H':>6} {'drop':>5} {'z-loss':>6} {'max|l|':>6} {'val loss':>8} {'time':>6}"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        f = res.final
        lines.append(
            f"{res.name:<18} {f['max_over_mean']:>8.2f} {f['kept_max_over_mean']:>8.2f} "
            f"{f['dead_experts']:>4d} {f['entropy']:>7.2f} {f['load_entropy']:>6.2f} "
            f"{f['drop_rate']:>5.0%} {f['z']:>6.2f} {f['max_logit']:>6.2f} {f['val_loss']:>8.3f} "
            f"{res.seconds:>5.1f}s"
        )
    E = len(results[0].final["routed_E"]) if results else 0
    if E:
        lines.append(
            f"(E = {E}: max/mean = routed load of the busiest expert over the mean, "
            f"{E // TaskConfig().top_k} = every token on the same K experts; kept m/m: processed "
            "after drops, over the same mean; "
            f"entropy and load H in nats, log E = {math.log(E):.2f}; val loss = MSE / variance)"
        )
    return "\n".join(lines)
