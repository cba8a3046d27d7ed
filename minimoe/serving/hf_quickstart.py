"""The Hugging Face quick-start of the course's seeds, run as written, and what it actually does.

The seeds suggest starting with

    SwitchTransformersConfig(num_experts=8, router_top_k=2)

In transformers 5.23.0 `SwitchTransformersConfig` has no `router_top_k` field (see
`models/switch_transformers/configuration_switch_transformers.py`: the fields run from
`vocab_size` to `add_cross_attention`, none of them a top-k). The keyword is kept as a plain
attribute of the config and read by nothing: the only router is `SwitchTransformersTop1Router`
(`modeling_switch_transformers.py`), which takes `torch.argmax` of the router probabilities,
one expert per token, as the Switch Transformer does (Fedus et al., arXiv 2101.03961, section
2.1). `run_quickstart` shows it by experiment: the same seed with router_top_k = 1, 2 or 8 builds
the same weights and gives the same logits and the same one expert per token.

What the config builds (defaults: the switch-base-8 shape): an encoder-decoder T5 with 12 + 12
blocks, every fourth block's feed-forward a sparse layer of 8 ReLU experts (sparse step =
num_layers // num_sparse_encoder_layers = 12 // 3 = 4: blocks 1, 5, 9 of each stack), an expert
capacity of 64 tokens per expert (`expert_capacity`, a fixed count rather than a factor), router
jitter noise 0.01 in training, and with `output_router_logits=True` the model's output carries
the router z-loss (ST-MoE, arXiv 2202.08906, eq. 5) and the load-balancing loss (Switch, eq.
4-6) of the encoder and the decoder, each weighted by 0.001 and already added into `loss`
(unlike minimoe, which reports the language-model loss alone). At random initialisation the
z-loss is large (~120-135 on the small model: router logits of a few units on 8 experts), so
0.25 of the loss of ~5.9 is the z-loss.

`NAMES` maps the config's names to minimoe's.
"""

from __future__ import annotations

import torch

__all__ = ["NAMES", "run_quickstart", "small_switch_config"]

# transformers' SwitchTransformersConfig name -> minimoe's name (and what differs)
NAMES: dict[str, str] = {
    "num_experts": "MoEConfig.n_experts (E)",
    "router_top_k": "nothing: not a field in transformers 5.23, ignored; Switch routes top-1 (K = 1)",
    "expert_capacity": "MoEConfig.expert_capacity (C, a fixed count per expert)",
    "d_model": "MoEConfig.d_model (D)",
    "d_ff": "MoEConfig.d_ff (F)",
    "dense_act_fn='relu'": "MoEConfig.activation='relu'",
    "router_jitter_noise": "MoEConfig.noise='jitter', jitter_eps",
    "router_z_loss_coef": "TrainConfig.z_coef (minimoe.losses.z_loss)",
    "router_aux_loss_coef": "TrainConfig.aux_coef (aux_loss='switch')",
    "num_sparse_encoder_layers": "LMConfig.moe_every (every n-th block; HF: num_layers // this)",
}


def small_switch_config(**overrides):
    """The quick-start config as written, shrunk to a model a CPU runs in a second."""
    from transformers import SwitchTransformersConfig

    small = dict(
        vocab_size=256,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_heads=4,
        num_layers=4,
        num_decoder_layers=4,
        num_sparse_encoder_layers=2,
        num_sparse_decoder_layers=2,
        expert_capacity=16,
    )
    return SwitchTransformersConfig(**{"num_experts": 8, "router_top_k": 2, **small, **overrides})


def run_quickstart(seed: int = 0) -> dict:
    """Build the quick-start's model (the full config on the meta device, a small one for real),
    run a forward pass with labels, and compare router_top_k = 1, 2 and 8.

    A forward pass with labels needs `decoder_start_token_id=0`, which the quick-start lacks
    (transformers 5.23 raises AttributeError without it: recorded in "full").

    Returns:
        A dict: "full" (the as-written config: parameters, sparse blocks, fields), "losses"
        (loss, encoder/decoder z and aux losses of the small model), "top_k_experiment" (per
        router_top_k: max |logits - logits at 1|, experts per token), and "names".
    """
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    as_written = SwitchTransformersConfig(num_experts=8, router_top_k=2)
    with torch.device("meta"):
        full = SwitchTransformersForConditionalGeneration(as_written)
    fields = (
        set(SwitchTransformersConfig.__dataclass_fields__)
        if hasattr(SwitchTransformersConfig, "__dataclass_fields__")
        else set(SwitchTransformersConfig.__init__.__code__.co_varnames)
    )
    sparse_blocks = [
        name.removesuffix(".mlp.router.classifier.weight")
        for name, _ in full.named_parameters()
        if name.endswith("router.classifier.weight")
    ]
    info_full = {
        "parameters": sum(p.numel() for p in full.parameters()),
        "sparse_blocks": sparse_blocks,
        "router_top_k_is_a_field": "router_top_k" in fields,
        "router_top_k_attribute": getattr(as_written, "router_top_k", None),
        "expert_capacity": as_written.expert_capacity,
        "router_classes": sorted(
            {type(m).__name__ for m in full.modules() if "Router" in type(m).__name__}
        ),
    }
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 256, (2, 12), generator=gen)
    labels = torch.randint(2, 256, (2, 6), generator=gen)
    # as written, a forward pass with labels fails: the config has no decoder_start_token_id
    # (T5 starts the decoder with the pad token, 0), so shifting the labels right cannot start
    torch.manual_seed(seed)
    model = SwitchTransformersForConditionalGeneration(small_switch_config())
    try:
        model(input_ids=input_ids, labels=labels)
        as_written_error = None
    except AttributeError as err:
        as_written_error = f"{type(err).__name__}: {err}"
    info_full["labels_forward_error_as_written"] = as_written_error
    experiment, reference, losses = {}, None, {}
    for top_k in (1, 2, 8):
        torch.manual_seed(seed)
        cfg = small_switch_config(router_top_k=top_k, decoder_start_token_id=0)
        model = SwitchTransformersForConditionalGeneration(cfg)
        model.eval()
        with torch.no_grad():
            out = model(input_ids=input_ids, labels=labels, output_router_logits=True)
        logits = out.logits
        reference = logits if reference is None else reference
        # the experts each token went to: the one-hot dispatch of every sparse block's router
        per_token = []
        for module in model.modules():
            if type(module).__name__ == "SwitchTransformersTop1Router":
                hidden = torch.randn(1, 5, model.config.d_model, generator=gen)
                expert_index, _, _ = module(hidden)
                per_token.append(int(expert_index.sum(-1).max()))
        experiment[top_k] = {
            "max_abs_logit_diff_vs_top_k_1": float((logits - reference).abs().max()),
            "max_experts_per_token": max(per_token),
        }
        if top_k == 2:  # the quick-start as written
            losses = {
                "loss": float(out.loss),
                "encoder_z_loss": float(out.encoder_z_loss),
                "encoder_aux_loss": float(out.encoder_aux_loss),
                "decoder_z_loss": float(out.decoder_z_loss),
                "decoder_aux_loss": float(out.decoder_aux_loss),
            }
    return {"full": info_full, "losses": losses, "top_k_experiment": experiment, "names": NAMES}
