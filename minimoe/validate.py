"""Input checks shared by every public entry of the library: one place, one wording.

Every public function checks its arguments here before it computes anything, so bad input gets a
`TypeError` (wrong kind: a float where an int is needed, an int tensor where floats are) or a
`ValueError` (right kind, value outside the allowed set) that names the argument and what it
may be, never a silent wrong answer or an error from deep inside torch.

Only one check looks at tensor *values*: `check_expert_ids`, the range of the expert ids. On a
GPU that costs a host-device synchronisation, so it makes one reduction and one transfer, and
the layer calls it once per forward pass (in the experts step); the internal functions the
layer uses after `route` (whose ids are in range by construction) skip it. Every other check
reads shapes, dtypes and Python numbers only: no sync.
"""

from __future__ import annotations

import math
import numbers

import torch


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int, after checking it is an integer (not a bool or a float) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            allowed = "a positive int" if low == 1 else f"an int >= {low}"
        elif low is None:
            allowed = f"an int <= {high}"
        else:
            allowed = f"an int in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_optional_int(name: str, value, *, low: int | None = None) -> int | None:
    """None, or an int >= low (as `check_int`)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__} {value!r}")
    return check_int(name, value, low=low)


def check_real(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """`value` as a finite float in the interval given by low/high (open ends when asked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        if low is not None and high is not None:
            lo, hi = (
                ("(" if low_open else "[") + f"{low:g}",
                f"{high:g}" + (")" if high_open else "]"),
            )
            allowed = f"in {lo}, {hi}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low:g} and finite"
        elif high is not None:
            allowed = f"{'<' if high_open else '<='} {high:g} and finite"
        else:
            allowed = "finite"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")
    return value


def check_tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float_tensor(name: str, t, *, dim: int | None = None) -> torch.Tensor:
    """A floating-point tensor (of `dim` dimensions when given)."""
    check_tensor(name, t)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    return t


def check_index_tensor(name: str, t, *, dim: int | None = None) -> torch.Tensor:
    """An integer (not bool) tensor (of `dim` dimensions when given)."""
    check_tensor(name, t)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be int64 or int32 (an integer tensor), got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    return t


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...], what: str = "") -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}{what}, got {tuple(t.shape)}")


def check_mask(name: str, t, shape: tuple[int, ...]) -> torch.Tensor:
    """A bool tensor of the given shape (keep_TK, or a padding mask_T)."""
    check_tensor(name, t)
    if t.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {t.dtype}")
    check_shape(name, t, shape)
    return t


def check_device(name: str, device) -> torch.device:
    """A torch.device from a device or its name ("cpu", "cuda:0")."""
    if not isinstance(device, (torch.device, str)):
        raise TypeError(f"{name} must be a torch.device or a string, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{name}={device!r} is not a device name such as 'cpu' or 'cuda'") from err


def check_expert_ids(expert_TK: torch.Tensor, n_experts: int, name: str = "expert_TK") -> None:
    """Every id in [0, n_experts): the one value check, one reduction and one device sync."""
    if expert_TK.numel():
        lo, hi = torch.aminmax(expert_TK)
        lo, hi = torch.stack([lo, hi]).tolist()
        if lo < 0 or hi >= n_experts:
            raise ValueError(
                f"{name}: expert ids must be in [0, {n_experts}) (n_experts={n_experts}), "
                f"got ids from {lo} to {hi}"
            )


def validate_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK) -> None:
    """The checks of every experts implementation (the signature of `minimoe.reference_moe`).

    Shapes, dtypes and devices of x, the routing and the weights, and the range of the expert
    ids (one device sync). Any strides are accepted: every implementation reads its inputs
    through their strides.
    """
    from minimoe.config import ACTIVATIONS

    for field in ("w1_EFD", "w2_EDF", "w3_EFD", "activation"):
        if not hasattr(params, field):
            raise TypeError(f"params must be an ExpertParams, got {type(params).__name__}")
    check_choice("activation", params.activation, ACTIVATIONS)
    check_float_tensor("x_TD", x_TD)
    check_float_tensor("w1_EFD", params.w1_EFD, dim=3)
    check_float_tensor("w2_EDF", params.w2_EDF, dim=3)
    E, F_, D = params.w1_EFD.shape
    check_shape("w2_EDF", params.w2_EDF, (E, D, F_), " (E, D, F) for w1_EFD (E, F, D)")
    if params.activation == "swiglu":
        if params.w3_EFD is None:
            raise ValueError(f"'swiglu' needs w3_EFD of shape {(E, F_, D)}, got None")
        check_float_tensor("w3_EFD", params.w3_EFD)
        check_shape("w3_EFD", params.w3_EFD, (E, F_, D), " (that of w1_EFD)")
    if x_TD.dim() != 2 or x_TD.shape[1] != D:
        raise ValueError(f"x_TD must have shape (T, D={D}), got {tuple(x_TD.shape)}")
    T = x_TD.shape[0]
    check_index_tensor("expert_TK", expert_TK, dim=2)
    if expert_TK.shape[0] != T:
        raise ValueError(f"expert_TK must have shape (T={T}, K), got {tuple(expert_TK.shape)}")
    if expert_TK.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"expert_TK must be int64 or int32, got {expert_TK.dtype}")
    check_float_tensor("gate_TK", gate_TK)
    check_shape("gate_TK", gate_TK, tuple(expert_TK.shape), " (that of expert_TK)")
    if keep_TK is not None:
        check_mask("keep_TK", keep_TK, tuple(expert_TK.shape))
    weights = [params.w1_EFD, params.w2_EDF]
    if params.activation == "swiglu":
        weights.append(params.w3_EFD)
    for w in weights:
        if w.dtype != x_TD.dtype:
            raise TypeError(f"x_TD is {x_TD.dtype} but an expert weight is {w.dtype}; cast one")
    tensors = [x_TD, expert_TK, gate_TK, *weights] + ([keep_TK] if keep_TK is not None else [])
    if len({t.device for t in tensors}) > 1:
        raise ValueError(
            f"inputs are on different devices: {sorted({str(t.device) for t in tensors})}"
        )
    check_expert_ids(expert_TK, E)
