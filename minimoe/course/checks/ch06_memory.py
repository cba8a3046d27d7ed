"""Running a learner's Triton kernel so that a wrong one is diagnosed, not a crash: the tools
shared by the chapter 06 checks.

Triton's CPU interpreter (`TRITON_INTERPRET=1`) does not check addresses. A `tl.load` past the
end of a tensor reads whatever memory lies there, and a `tl.store` past the end overwrites it
(silently, or with a crash of the whole process). Two tools turn such a mistake into a message:

- **guarded tensors**: each tensor a check passes to a kernel is a view into a larger buffer; the
  extra elements (rows after, columns to the right) hold a marker, NaN for inputs and `POISON`
  for outputs. A kernel that reads past an edge reads NaN; one that writes past it changes the
  marker. This works on a GPU too.
- **the interpreter's bounds check** (`watch_memory`): while it is active, every load and store the
  interpreter runs for one kernel is checked against the tensors that kernel was launched with.
  An access outside them is skipped (a load gives 0) and recorded with the argument's name and the
  (row, column) it aimed at, so the check can say "you read row 8 of x, which has 8 rows".

The bounds check replaces two methods of the interpreter's builder (`create_masked_load`,
`create_masked_store`) and the kernel object's `run`, all Triton internals (checked against Triton
3.x). When they are missing, or on a GPU, only the guards are used.

Left out: atomics and tensor descriptors (the exercises use neither).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from minimoe.course.checks._common import Exercise, describe

POISON = 777.0  # what an output element holds until the kernel writes it (exact in float16)
GUARD = 64  # guard elements (rows, columns) around a tensor: more than any block overshoots
LEAD_GUARD = 8  # guard entries on the first axis of a 3-D tensor (experts)

# (text in a Triton error, what it most likely means)
TRITON_HINTS = (
    ("power of 2", "tl.arange(0, n) needs n a power of 2: use the BLOCK_SIZE, not the length"),
    ("must be >= 16", "tl.dot needs blocks of at least 16 x 16"),
    (
        "incompatible dimensions",
        "two blocks have shapes that do not broadcast: a [:, None] or "
        "[None, :] is missing or swapped",
    ),
    ("unsupported AST node type: Raise", "replace the `raise NotImplementedError(...)` line"),
)


def interpreted(kernel: Any) -> bool:
    """Whether `kernel` (a `@triton.jit` function) runs in Triton's CPU interpreter."""
    return type(kernel).__name__ == "InterpretedFunction"


def device_for(kernel: Any) -> torch.device:
    """Where a kernel's tensors must live: the CPU in the interpreter, else the GPU."""
    return torch.device("cpu" if interpreted(kernel) else "cuda")


def jit_like(kernel: Any, fn: Callable) -> Any:
    """`fn` (a plain Python function written in triton.language) as a kernel of the same kind as
    `kernel`: interpreted when `kernel` is, compiled for the GPU otherwise. The checks' own kernels
    are made this way, so they run wherever the learner's runs, whatever the import order."""
    import triton

    if interpreted(kernel):
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    return triton.jit(fn)


def expect_kernel(ex: Exercise, kernel: Any, name: str) -> None:
    """Fail clearly unless `kernel` is a solved `@triton.jit` function that can run here."""
    if not hasattr(kernel, "__getitem__") or not hasattr(kernel, "fn"):
        raise ex.fail(f"{name} must be a @triton.jit function, got {type(kernel).__name__}")
    module = str(getattr(kernel.fn, "__module__", ""))
    if any(kernel.fn is ref for ref in ex.library) or module.startswith("minimoe.triton"):
        raise ex.fail(
            f"this is the library's own kernel {describe(kernel.fn)}, not your answer: write "
            f"your own @triton.jit {name} in the answer cell"
        )
    try:
        source = inspect.getsource(kernel.fn)
    except (OSError, TypeError):
        source = ""
    if "raise NotImplementedError" in source:
        raise ex.fail(
            "not solved yet: replace the `raise NotImplementedError(...)` line with your code"
        )
    if not interpreted(kernel) and not torch.cuda.is_available():
        raise ex.fail(
            f"{name} was compiled for a GPU, and there is none: set TRITON_INTERPRET=1 before "
            "importing triton (run the notebook's first cell, then re-run the kernel's cell)"
        )


def run_learner(ex: Exercise, fn: Callable, *args: Any, case: str, **kwargs: Any) -> Any:
    """Call the learner's function or launch; turn Triton's wrapped errors into hints."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:
        chain, e = [], error
        while e is not None and len(chain) < 8:
            chain.append(e)
            e = e.__cause__ or e.__context__
        if any(isinstance(e, NotImplementedError) for e in chain) or "NotImplementedError" in str(
            error
        ):
            raise ex.fail(
                "not solved yet: replace the `raise NotImplementedError(...)` line with your code"
            ) from None
        root = chain[-1]
        text = " ".join(str(e) for e in chain)
        hint = next((h for needle, h in TRITON_HINTS if needle in text), "")
        message = f"{type(root).__name__}: {(str(root).strip().splitlines() or [''])[-1]}"
        raise ex.fail(
            f"your kernel raised {message} on {case}"
            + (f". Likely mistake: {hint}" if hint else "")
        ) from error


# --- guarded tensors -------------------------------------------------------------------------


def guarded(values: torch.Tensor, fill: float, *, transposed: bool = False) -> torch.Tensor:
    """A copy of `values` that is a view into a larger buffer filled with `fill`.

    Args:
        values: 1-D, 2-D or 3-D. A 1-D tensor gets GUARD elements before and after; the last two
            axes of a 2-D or 3-D one get GUARD rows before and after and GUARD columns to the right
            (so a column past the edge lands in the guard, not in the next row); the first axis
            of a 3-D one LEAD_GUARD entries before and after.
        fill: the marker in the guard.
        transposed: store a 2-D tensor column-major (its transpose is the row-major view), to
            catch a kernel that assumes row-major strides instead of using the ones passed in.

    Returns:
        A tensor equal to `values`, same shape, dtype and device, with the guard around it.
    """
    if transposed:
        return guarded(values.t(), fill).t()
    g = GUARD
    if values.dim() == 1:
        buf = values.new_full((values.shape[0] + 2 * g,), fill)
        view = buf[g : g + values.shape[0]]
    elif values.dim() == 2:
        R, C = values.shape
        buf = values.new_full((R + 2 * g, C + g), fill)
        view = buf[g : g + R, :C]
    else:  # (E, R, C): LEAD_GUARD experts before and after too
        E, R, C = values.shape
        buf = values.new_full((E + 2 * LEAD_GUARD, R + 2 * g, C + g), fill)
        view = buf[LEAD_GUARD : LEAD_GUARD + E, g : g + R, :C]
    view.copy_(values)
    return view


def poisoned(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A guarded output tensor of `shape` (dtype and device of `like`), POISON everywhere."""
    return guarded(torch.full(shape, POISON, dtype=like.dtype, device=like.device), POISON)


def backing(view: torch.Tensor) -> torch.Tensor:
    """The whole buffer behind a guarded view (guards included), as a flat tensor."""
    storage = view.untyped_storage()
    return torch.empty(0, dtype=view.dtype, device=view.device).set_(storage)


def guard_written(view: torch.Tensor) -> bool:
    """Whether anything outside `view` in its buffer is no longer the POISON marker."""
    inside = torch.zeros(backing(view).shape, dtype=torch.bool, device=view.device)
    marker = torch.empty(0, dtype=torch.bool, device=view.device).set_(
        inside.untyped_storage(), view.storage_offset(), view.shape, view.stride()
    )
    marker.fill_(True)
    outside = backing(view)[~inside]
    return bool((outside != POISON).any())


# --- the interpreter's bounds check ----------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """An out-of-bounds load or store: which argument it missed and the index it aimed at.

    Attributes:
        kind: "load" or "store".
        arg: the kernel argument whose tensor the address is nearest to.
        index: the index the address would have in that tensor (one entry per axis; some out of
            range), e.g. (8, 3) for row 8, column 3.
    """

    kind: str
    arg: str
    index: tuple[int, ...]


@dataclass
class MemoryWatch:
    """The tensors a kernel was launched with, and the out-of-bounds accesses it made."""

    views: dict[str, torch.Tensor] = field(default_factory=dict)
    bad: list[Access] = field(default_factory=list)

    def where(self, addresses: np.ndarray, itemsize: int) -> tuple[np.ndarray, list]:
        """(in_bounds per address, [(arg, index) of each address out of bounds])."""
        flat = addresses.astype(np.int64).reshape(-1)
        ok = np.zeros(flat.shape, dtype=bool)
        best: list = [None] * int(flat.size)
        best_dist = np.full(flat.shape, np.inf)
        for name, view in self.views.items():
            size = view.element_size()
            offset = (flat - view.data_ptr()) // size
            index, inside = _unravel(offset, view.shape, view.stride())
            ok |= inside
            start = view.untyped_storage().data_ptr()
            in_buffer = (flat >= start) & (flat < start + view.untyped_storage().nbytes())
            dist = np.where(in_buffer, 0, np.abs(flat - view.data_ptr()))
            closer = dist < best_dist
            best_dist = np.where(closer, dist, best_dist)
            for i in np.flatnonzero(closer & ~ok):
                best[i] = (name, tuple(int(ax[i]) for ax in index))
        return ok.reshape(addresses.shape), [best[i] for i in np.flatnonzero(~ok)]


def _unravel(offset: np.ndarray, shape, stride) -> tuple[list[np.ndarray], np.ndarray]:
    """The index of each element offset in a strided view, and whether it lies inside it.

    Axes are peeled from the largest stride to the smallest (the guards make every view's layout
    non-overlapping, so this inverts the layout); an axis of length 1 or stride 0 is index 0.
    """
    index = [np.zeros(offset.shape, dtype=np.int64) for _ in shape]
    rest = offset.copy()
    inside = np.ones(offset.shape, dtype=bool)
    for axis in sorted(range(len(shape)), key=lambda a: -stride[a]):
        if stride[axis] == 0:
            continue
        index[axis] = np.floor_divide(rest, stride[axis])
        rest = rest - index[axis] * stride[axis]
        inside &= (index[axis] >= 0) & (index[axis] < shape[axis])
    return index, inside & (rest == 0)


def _patch_builder(watch: MemoryWatch) -> Callable[[], None] | None:
    """Route the interpreter's loads and stores through `watch`; returns the undo (or None)."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return None
    builder = getattr(interpreter, "interpreter_builder", None)
    load = getattr(builder, "create_masked_load", None)
    store = getattr(builder, "create_masked_store", None)
    if load is None or store is None:
        return None

    def checked(kind: str, ptrs: Any, mask: Any) -> Any:
        itemsize = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
        ok, missed = watch.where(ptrs.data, itemsize)
        active = np.broadcast_to(mask.data, ok.shape)
        for (arg, index), was_active in zip(missed, active[~ok].reshape(-1)):
            if was_active and len(watch.bad) < 10_000:
                watch.bad.append(Access(kind, arg, index))
        return type(mask)(active & ok, mask.dtype)

    def masked_load(ptrs, mask, other, cache_policy, is_volatile):
        return load(ptrs, checked("load", ptrs, mask), other, cache_policy, is_volatile)

    def masked_store(ptrs, value, mask, cache_policy):
        return store(ptrs, value, checked("store", ptrs, mask), cache_policy)

    builder.create_masked_load = masked_load
    builder.create_masked_store = masked_store

    def undo() -> None:
        del builder.create_masked_load, builder.create_masked_store

    return undo


@contextmanager
def watch_memory(kernel: Any) -> Iterator[MemoryWatch | None]:
    """Check every load and store of `kernel` against the tensors it is launched with.

    Yields:
        The `MemoryWatch` collecting out-of-bounds accesses, or None where no check is possible
        (a GPU, or a Triton without the internals this relies on).
    """
    if not interpreted(kernel) or not hasattr(kernel, "run"):
        yield None
        return
    watch = MemoryWatch()
    undo = _patch_builder(watch)
    if undo is None:
        yield None
        return
    own = vars(kernel).get("run")  # an instance's own `run`, put back afterwards
    run, names = kernel.run, list(getattr(kernel, "arg_names", []))

    def watched_run(*args: Any, grid: Any, warmup: Any, **kwargs: Any) -> Any:
        bound = dict(zip(names, args)) | kwargs
        watch.views = {k: v for k, v in bound.items() if isinstance(v, torch.Tensor)}
        return run(*args, grid=grid, warmup=warmup, **kwargs)

    kernel.run = watched_run
    try:
        yield watch
    finally:
        if own is None:
            del kernel.run
        else:
            kernel.run = own
        undo()


@dataclass
class Outcome:
    """What one launch did: its guarded output view and its out-of-bounds accesses."""

    out: torch.Tensor
    bad: list[Access] | None  # None when the interpreter's bounds check was not available

    @property
    def buffer(self) -> torch.Tensor:
        """The whole output buffer, guards included."""
        return backing(self.out)

    def same_as(self, other: Outcome, atol: float, rtol: float) -> bool:
        """Same output buffer (NaN equal to NaN) and out-of-bounds accesses to the same arguments."""
        a, b = self.buffer.double().cpu(), other.buffer.double().cpu()
        close = torch.isclose(a, b, atol=atol, rtol=rtol, equal_nan=True).all()
        kinds = {(x.kind, x.arg) for x in self.bad or []}
        return bool(close) and kinds == {(x.kind, x.arg) for x in other.bad or []}


def launch(kernel: Any, grid: tuple[int, ...], out: torch.Tensor, *args: Any, **kw: Any) -> Outcome:
    """`kernel[grid](*args, **kw)` under the bounds check; `out` is the guarded output view."""
    with watch_memory(kernel) as watch:
        kernel[grid](*args, **kw)
    return Outcome(out, None if watch is None else list(watch.bad))
