"""The grader's side inside a graded kernel: run each canonical check so that it cannot be faked.

The grader puts three kinds of cells into the notebook it runs (`minimoe.course.grade`):

- a first cell, before any of the learner's, that calls `arm()`: it imports the check modules
  and records a *baseline* of what a check relies on (the `minimoe` modules and the classes they
  define, `torch`'s functions and `torch.Tensor`'s methods, the builtins, and IPython's hooks:
  input and AST transformers, custom exception handlers, event callbacks, the shell's methods);
- before each answer cell, `before_answer(names)`: what the names a check will test are bound to
  before the learner's answer runs, so that a name left over from an earlier cell (the library's
  `loop_moe`, say) is never graded as the learner's answer;
- in place of each check cell, `run_check(exercise, nonce, source, names)`. It refuses to run
  when anything in the baseline was replaced or hooked since (raising `CheckTampered`); imports
  the check's module and the comparison helpers (`minimoe.testing`, `minimoe.course.checks._common`)
  again from the read-only copy the kernel was given; runs the canonical source in the notebook's
  namespace with the learner's functions wrapped so that they may only return plain tensors;
  compares everything again afterwards (an answer that patches the check while it runs); and only
  then prints the evidence line `evidence(nonce, exercise)`.

The nonce is fresh for every graded notebook and appears only in the check cells, so output
printed by a learner's cell, or a check cell silenced by a hook, carries no evidence: the grader
counts a check as passed only when its cell ran cleanly *and* printed the evidence line.

What this does not stop: the kernel runs the learner's code, so an attacker who studies this
module can still reach into it (replace it in `sys.modules`, read the nonce from the check cell's
source, rewrite the frames that run the check). It is built to catch tampering that does not aim
at the guard itself (tests/course/test_grade_adversarial.py has a case for each class), and a module
first imported after `arm()` (chapter 06's Triton code) is compared only while a check runs. The
grader's process isolation (`minimoe.course.sandbox`) keeps even a successful forgery from
touching any other submission.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVIDENCE = "minimoe-grade {nonce} {exercise} passed"
CHECK_MODULES = re.compile(r"^minimoe\.(course\.checks(\..*)?|testing)$")
# event callbacks registered by these packages are part of a normal kernel (inline plots, widgets)
TRUSTED_CALLBACKS = (
    "IPython.",
    "ipykernel.",
    "matplotlib",
    "ipympl.",
    "ipywidgets.",
    "plotly.",
    "tqdm.",
)
# builtins that ipykernel rebinds on every execution, or that are per-cell output history
VOLATILE_BUILTINS = {"input", "raw_input", "getpass", "_", "__", "___"}
# minimoe modules whose globals change while they work: the grader's own machinery under
# minimoe.course (the guard included), except the checks and the lessons' toys, tracked like
# the library
VOLATILE_MODULES = "minimoe.course."
TRACKED_COURSE_MODULES = ("minimoe.course.checks", "minimoe.course.toys")

_baseline: dict[tuple[str, str], Any] = {}
_hooks: dict[str, Any] = {}
_root: Path | None = None
_before: dict[str, Any] = {}
_UNBOUND = object()
_seen: list[str] = []  # tampering found by the wrappers while the current check runs


class CheckTampered(BaseException):
    """A check could not be trusted: something it relies on was replaced or hooked.

    A BaseException, so that a check's `except Exception` (which reports a learner's crash)
    lets it through; `run_check` also remembers it in case something swallows it anyway."""


def evidence(nonce: str, exercise: str) -> str:
    """The line a check prints when, and only when, it ran in full and passed."""
    return EVIDENCE.format(nonce=nonce, exercise=exercise)


# --- what a check relies on ------------------------------------------------------------------


def _ident(value: Any) -> Any:
    """What must stay the same for `value` to be the object it was (a function's code too)."""
    if isinstance(value, types.FunctionType):
        return (id(value), id(value.__code__), id(value.__defaults__), id(value.__kwdefaults__))
    if isinstance(value, (classmethod, staticmethod)):
        return ("wrapped", _ident(value.__func__))
    if isinstance(value, property):
        return ("property", _ident(value.fget), _ident(value.fset))
    return id(value)


def _namespace(into: dict, label: str, ns: dict, skip: set[str] | frozenset = frozenset()) -> None:
    for key, value in list(ns.items()):
        if isinstance(key, str) and key not in skip:
            into[(label, key)] = (_ident(value), value)


def _watched() -> list[tuple[str, dict, set[str]]]:
    """(label, namespace, names to skip) of everything outside minimoe that a check relies on."""
    import torch
    import torch.nn.functional

    out = [
        ("builtins", vars(builtins), VOLATILE_BUILTINS),
        ("torch", vars(torch), set()),
        ("torch.Tensor", vars(torch.Tensor), set()),
        ("torch._C.TensorBase", vars(torch._C.TensorBase), set()),
        ("torch.nn.functional", vars(torch.nn.functional), set()),
        ("torch.testing", vars(torch.testing), set()),
        ("math", vars(sys.modules["math"]), set()),
    ]
    shell = _shell()
    if shell is not None:
        for cls in type(shell).__mro__[:2]:  # the kernel's shell class and IPython's
            out.append((f"{cls.__module__}.{cls.__qualname__}", vars(cls), set()))
        methods = {k: v for k, v in vars(shell).items() if callable(v)}
        out.append(("the IPython shell", methods, set()))
    return out


def _is_tracked(name: str) -> bool:
    if name.startswith(VOLATILE_MODULES):
        return name.startswith(TRACKED_COURSE_MODULES)
    return name == "minimoe" or name.startswith("minimoe.")


def fingerprint() -> dict[tuple[str, str], Any]:
    """{(namespace, name): (identity, object)} over every loaded minimoe module, the classes each defines,
    and `_watched()`."""
    fp: dict[tuple[str, str], Any] = {}
    for name, module in list(sys.modules.items()):
        if not _is_tracked(name) or not isinstance(module, types.ModuleType):
            continue
        ns = vars(module)
        _namespace(fp, name, ns)
        for key, value in list(ns.items()):
            if isinstance(value, type) and getattr(value, "__module__", None) == name:
                _namespace(fp, f"{name}.{key}", vars(value))
    for label, ns, skip in _watched():
        _namespace(fp, label, ns, skip)
    return fp


def _benign(old: Any, new: Any) -> bool:
    """torch's own wrapping of its functions (importing torch._dynamo wraps torch.manual_seed)."""
    module = getattr(new, "__module__", None)
    return getattr(new, "__wrapped__", None) is old and str(module).startswith("torch")


def _changed(before: dict, after: dict) -> list[str]:
    """The names whose object changed or vanished (new names are fine: lazy imports add some)."""
    out = []
    for (ns, key), (ident, old) in before.items():
        now = after.get((ns, key))
        if now is None or (now[0] != ident and not _benign(old, now[1])):
            out.append(f"{ns}.{key}")
    return out


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _callback_ok(callback: Any) -> bool:
    fn = getattr(callback, "__func__", callback)
    module = getattr(fn, "__module__", None)
    return isinstance(module, str) and module.startswith(TRUSTED_CALLBACKS)


def _from_a_file(obj: Any) -> bool:
    """Whether `obj` (or its class) comes from an installed module, not from a notebook cell."""
    name = getattr(obj, "__module__", None) or type(obj).__module__
    module = sys.modules.get(name) if isinstance(name, str) else None
    return name != "__main__" and getattr(module, "__file__", None) is not None


def _hook_state() -> dict[str, Any]:
    """IPython's and Python's hooks, as comparable values."""
    shell = _shell()
    state: dict[str, Any] = {
        "sys.stdout": id(sys.stdout),
        "sys.stderr": id(sys.stderr),
        "sys.displayhook": id(sys.displayhook),
        "builtins.__import__": id(builtins.__import__),
    }
    if shell is not None:
        manager = shell.input_transformer_manager
        state.update(
            {
                "an input transformer": [id(f) for f in shell.input_transformers_post],
                "a cleanup input transformer": [id(f) for f in shell.input_transformers_cleanup],
                "an input line transform": [id(f) for f in manager.line_transforms],
                "a token transformer": [id(f) for f in manager.token_transformers],
                "an AST transformer": [id(f) for f in shell.ast_transformers],
                "the shell's exception handler": id(getattr(shell, "CustomTB", None)),
            }
        )
    return state


def hook_problems() -> list[str]:
    """The hooks set since `arm()` (tracers, IPython's transformers, exception handlers, event
    callbacks, torch modes), in words ([] when none was)."""
    found: list[str] = []
    if sys.gettrace() is not None or sys.getprofile() is not None:
        found.append("a trace or profile function is set (sys.settrace)")
    shell = _shell()
    if shell is not None:
        if shell.custom_exceptions:
            found.append("a custom exception handler is set (get_ipython().set_custom_exc)")
        for event, callbacks in shell.events.callbacks.items():
            if not all(_callback_ok(cb) for cb in callbacks):
                found.append(f"a {event!r} event callback was registered")
    now = _hook_state()
    found += [
        f"{what} was added or replaced"
        for what, v in _hooks.items()
        if what != "import hooks" and now.get(what) != v
    ]
    for hook in [*sys.meta_path, *sys.path_hooks]:  # a library may add its own; a notebook not
        if id(hook) not in _hooks.get("import hooks", ()) and not _from_a_file(hook):
            found.append("an import hook was added (sys.meta_path or sys.path_hooks)")
            break
    try:
        import torch.overrides
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if torch.overrides._is_torch_function_mode_enabled() and (
            torch._C._len_torch_function_stack() > 0
        ):
            found.append("a torch function mode is active (TorchFunctionMode)")
        if _get_current_dispatch_mode() is not None:
            found.append("a torch dispatch mode is active (TorchDispatchMode)")
    except (ImportError, AttributeError):  # an older torch without these internals
        pass
    return found


def problems() -> tuple[list[str], dict]:
    """What was replaced or hooked since `arm()`, in words ([] when nothing was), and the
    fingerprint it compared with the baseline."""
    found = hook_problems()
    now = fingerprint()
    changed = _changed(_baseline, now)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        found.append(", ".join(changed[:3]) + more + " replaced")
    return found, now


def arm() -> None:
    """Record the baseline. Run by the grader's first cell, before any of the learner's code."""
    global _root
    import minimoe
    import minimoe.course.checks  # noqa: F401  (every check module that needs no Triton)
    import minimoe.testing  # noqa: F401

    _root = Path(minimoe.__file__).resolve().parent
    _baseline.clear()
    _baseline.update(fingerprint())
    _hooks.clear()
    _hooks.update(_hook_state())
    _hooks["import hooks"] = {id(h) for h in [*sys.meta_path, *sys.path_hooks]}


# --- running one check -------------------------------------------------------------------------


def before_answer(names: list[str], namespace: dict) -> None:
    """Record what `names` are bound to just before the learner's answer cell runs."""
    _before.clear()
    _before.update({n: namespace.get(n, _UNBOUND) for n in names})


def _fresh_check_modules(source: str, fp: dict) -> None:
    """Import the check modules `source` uses again from the kernel's read-only copy, with fresh
    comparison helpers (`minimoe.testing`, `minimoe.course.checks._common`), and bind the package's
    names to the fresh functions. `fp` (the fingerprint just verified) is brought up to date, and
    so is the baseline: the guard replaced those modules, not the learner."""
    package = sys.modules.get("minimoe.course.checks")
    targets = re.findall(r"from\s+(minimoe\.course\.checks\.\w+)\s+import", source)
    rebind: dict[str, str] = {}  # package name -> module that defines it
    for names in re.findall(r"from\s+minimoe\.course\.checks\s+import\s+([\w, ]+)", source):
        for name in (n.strip() for n in names.split(",")):
            module = getattr(getattr(package, name, None), "__module__", None)
            if isinstance(module, str) and CHECK_MODULES.match(module):
                rebind[name] = module
    wanted = ["minimoe.testing", "minimoe.course.checks._common", *targets, *rebind.values()]
    wanted = list(dict.fromkeys(wanted))
    for name in wanted:
        sys.modules.pop(name, None)
    fresh = {}
    for name in wanted:
        module = importlib.import_module(name)
        where = Path(getattr(module, "__file__", "") or "").resolve()
        if _root is None or not where.is_relative_to(_root):
            raise CheckTampered(f"check tampered with: {name} was loaded from {where}")
        fresh[name] = module
    for name, module in rebind.items():
        setattr(package, name, getattr(fresh[module], name))
    update: dict = {}
    for name, module in fresh.items():
        ns = vars(module)
        _namespace(update, name, ns)
        for key, value in list(ns.items()):
            if isinstance(value, type) and getattr(value, "__module__", None) == name:
                _namespace(update, f"{name}.{key}", vars(value))
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            _namespace(update, parent, {child: module})
    if package is not None:
        _namespace(update, "minimoe.course.checks", {n: getattr(package, n) for n in rebind})
    for target in (fp, _baseline):
        for key in [k for k in target if k[0] in fresh or k[0].rpartition(".")[0] in fresh]:
            del target[key]
        target.update(update)


def _plain(value: Any, exercise: str) -> Any:
    """Reject tensor subclasses anywhere in a learner's return value (a tuple, list or dict)."""
    import torch

    if isinstance(value, torch.Tensor) and type(value) not in (torch.Tensor, torch.nn.Parameter):
        _seen.append(
            f"check tampered with: the answer returned a {type(value).__name__}, a torch.Tensor "
            "subclass; an answer must return plain tensors"
        )
        raise CheckTampered(_seen[-1])
    if isinstance(value, (tuple, list)):
        for item in value:
            _plain(item, exercise)
    elif isinstance(value, dict):
        for item in value.values():
            _plain(item, exercise)
    return value


def _guarded(fn: Callable, exercise: str) -> Callable:
    @functools.wraps(fn)
    def answer(*args: Any, **kwargs: Any) -> Any:
        return _plain(fn(*args, **kwargs), exercise)

    return answer


def run_check(exercise: str, nonce: str, source: str, names: list[str], namespace: dict) -> None:
    """Run the canonical check `source` of `exercise` in `namespace`; print the evidence line only
    when it ran in full, passed, and nothing it relies on was touched before or during the run.

    Raises:
        CheckTampered: something the check relies on was replaced or hooked.
        AssertionError: the answer cell did not define a name the check tests.
        whatever the check raises for a wrong answer.
    """
    found, start = problems()
    if found:
        raise CheckTampered("check tampered with: " + "; ".join(found))
    before, _ = dict(_before), _before.clear()
    for name in names:
        if name not in namespace:
            raise AssertionError(
                f"Exercise {exercise}: the answer cell does not define `{name}` "
                "(keep the name the exercise asks for)"
            )
        if before.get(name, _UNBOUND) is namespace[name]:
            raise AssertionError(
                f"Exercise {exercise}: the answer cell does not define `{name}`; the `{name}` "
                "it would test comes from an earlier cell"
            )
    _fresh_check_modules(source, start)
    saved = {n: namespace[n] for n in names}
    for name, value in saved.items():
        if isinstance(value, types.FunctionType):
            namespace[name] = _guarded(value, exercise)
    _seen.clear()
    try:
        exec(compile(source, f"<check {exercise}>", "exec"), namespace)
    except CheckTampered:
        raise
    except BaseException as error:
        if _seen:
            raise CheckTampered(_seen[0]) from None
        changed = _changed(start, fingerprint())
        if changed:
            raise CheckTampered(
                f"check tampered with: {', '.join(changed[:3])} changed while the check ran"
            ) from None
        if not isinstance(error, Exception):  # SystemExit, KeyboardInterrupt from an answer
            raise CheckTampered(
                f"check tampered with: the check was stopped by {type(error).__name__}"
            ) from None
        raise
    finally:
        namespace.update(saved)
    changed = _changed(start, fingerprint())
    found = hook_problems()
    if _seen:
        raise CheckTampered(_seen[0])
    if changed or found:
        what = "; ".join(
            [f"{', '.join(changed[:3])} changed while the check ran"] if changed else []
        )
        raise CheckTampered("check tampered with: " + "; ".join(filter(None, [what, *found])))
    print(evidence(nonce, exercise), flush=True)
