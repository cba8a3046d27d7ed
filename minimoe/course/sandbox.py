"""Isolation for grading: what keeps one submission from touching the grader or another submission.

- `Pristine`: a copy of the `minimoe` package (checks, comparison helpers, library) taken when
  grading starts, that the kernels import instead of the installed one. It is read-only (and, when
  the grader runs as root, owned by root while kernels run as another user), and `changed()`
  compares it file by file with the snapshot kept in the grader's memory (sha256 of every file,
  extra files included), so that `restore()` can put it back between two notebooks.
- `Box`: how a kernel is started: `kernel_box.py` in front of the kernel's command sets a memory
  limit (RLIMIT_AS), kills the kernel with its parent, and, when the grader runs as root and an
  unprivileged user can run this Python, switches to a user of its own per grading slot (so a kernel
  can neither signal the grader, nor another slot's kernel, nor write the pristine copy, the
  solutions or anyone's submission). Each notebook gets a fresh scratch folder as its working
  directory and home.

The grader (`minimoe.course.grade`) runs each notebook in a worker process in a session of its own,
so a kernel that kills its parent or its parent's process group only ends that worker. Without
root the kernel runs as the grader's user: what it can still do then (find and signal the grader
process itself, write where the grader can write) is caught only as far as the pristine-copy check
and the worker boundary reach; grade untrusted classrooms as root (a container) for the full
isolation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import minimoe

PACKAGE_DIR = Path(minimoe.__file__).resolve().parent
KERNEL_BOX = Path(__file__).resolve().with_name("kernel_box.py")
SANDBOX_UID = 64000  # slot j runs kernels as uid/gid SANDBOX_UID + j (root only)
GIB = 1024**3


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _set_mode(root: Path, writable: bool) -> None:
    """Directories 0755/0555 and files 0644/0444 under root (root included)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755 if writable else 0o555)
        else:
            path.chmod(0o644 if writable else 0o444)


class Pristine:
    """A read-only copy of the minimoe package under `root`/minimoe, and its snapshot.

    Args:
        root: an empty folder; kernels get it first on PYTHONPATH.
        package: the package folder to copy (default: the minimoe being imported).
    """

    def __init__(self, root: Path, package: Path = PACKAGE_DIR) -> None:
        self.root = Path(root)
        self.package = self.root / "minimoe"
        # copy2 keeps modification times, so the copied bytecode caches stay valid
        shutil.copytree(package, self.package, ignore=shutil.ignore_patterns("*.pyc.*"))
        self._bytes = {
            p.relative_to(self.root).as_posix(): p.read_bytes() for p in _files(self.package)
        }
        self._sha = {rel: hashlib.sha256(b).hexdigest() for rel, b in self._bytes.items()}
        self._times = {rel: os.stat(self.root / rel).st_mtime_ns for rel in self._bytes}
        _set_mode(self.package, writable=False)
        self.root.chmod(0o755)

    def changed(self) -> list[str]:
        """Files added, removed or changed since the copy was made (relative paths)."""
        now = {p.relative_to(self.root).as_posix(): p for p in _files(self.package)}
        found = sorted(set(now) ^ set(self._sha))
        found += [
            rel
            for rel, path in now.items()
            if rel in self._sha and (path.is_symlink() or _digest(path) != self._sha[rel])
        ]
        return sorted(set(found))

    def restore(self) -> None:
        """Put the snapshot back, file for file (and the modes)."""
        _make_removable(self.package)
        shutil.rmtree(self.package)
        for rel, data in self._bytes.items():
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.utime(path, ns=(self._times[rel], self._times[rel]))
        _set_mode(self.package, writable=False)


def _make_removable(root: Path) -> None:
    if root.exists():
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(stat.S_IRWXU)


def remove_tree(root: Path) -> None:
    """Remove a folder made by this module, read-only parts included."""
    _make_removable(root)
    shutil.rmtree(root, ignore_errors=True)


def can_run_as(uid: int) -> bool:
    """Whether a process of user `uid` can run this Python with ipykernel and torch (a user
    without rights to the interpreter's folders cannot, and kernels then keep our user)."""
    if os.name != "posix" or os.geteuid() != 0:
        return False
    probe = "import importlib.util as u, ipykernel, sys; sys.exit(u.find_spec('torch') is None)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            user=uid,
            group=uid,
            extra_groups=[],
            cwd="/",
            env={**os.environ, "HOME": "/"},
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@dataclass
class Box:
    """How every kernel of one grading run is started.

    Attributes:
        pristine_root: the folder holding the pristine `minimoe` (first on the kernels' PYTHONPATH).
        memory_gb: the address-space limit of a kernel (0: none).
        other_user: run kernels as SANDBOX_UID + slot (the grader is root and that user can run
            this Python).
        threads: torch/OpenMP threads per kernel (so parallel slots do not oversubscribe cores).
    """

    pristine_root: Path
    memory_gb: float = 8.0
    other_user: bool = False
    threads: int = 0
    scratch_parent: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))

    def uid(self, slot: int) -> int:
        return SANDBOX_UID + slot if self.other_user else -1

    def scratch(self, slot: int) -> Path:
        """A fresh working folder and home for one notebook's kernels."""
        path = Path(tempfile.mkdtemp(prefix="minimoe-grade-nb-", dir=self.scratch_parent))
        if self.other_user:
            os.chown(path, self.uid(slot), self.uid(slot))
        return path

    def kernel_prefix(self, slot: int, scratch: Path) -> list[str]:
        """The launcher command put in front of the kernel's own."""
        memory = int(self.memory_gb * GIB) if self.memory_gb > 0 else 0
        uid = self.uid(slot)
        return [sys.executable, "-I", "-S", str(KERNEL_BOX), str(memory), str(uid), str(uid)] + [
            str(scratch),
            "--",
        ]

    def kernel_env(self, scratch: Path) -> dict[str, str]:
        """Our environment, with the pristine copy first on PYTHONPATH and every cache and
        config folder a kernel writes inside its scratch folder."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.pristine_root)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        for name, sub in (
            ("HOME", ""),
            ("IPYTHONDIR", ".ipython"),
            ("MPLCONFIGDIR", ".matplotlib"),
            ("TRITON_CACHE_DIR", ".triton"),
            ("XDG_CACHE_HOME", ".cache"),
        ):
            env[name] = str(scratch / sub) if sub else str(scratch)
        env.pop("JUPYTER_RUNTIME_DIR", None)
        if self.threads > 0:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env
