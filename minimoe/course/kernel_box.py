"""Start a graded kernel boxed in: a memory limit, no core files, dead with its parent, and (when the
grader runs as root) as an unprivileged user that can neither signal the grader nor write its files.

    python -I -S kernel_box.py MEMORY_BYTES UID GID HOME -- KERNEL_ARGV...

Run by path, not as a module, and with only the standard library, so that it starts in
milliseconds. UID -1 keeps the current user. The kernel's connection file (the argument after
`-f`) is copied into HOME first when the user changes, since the unprivileged user cannot read the
grader's copy. Used by `minimoe.course.sandbox`.

An editable install of minimoe adds an import finder that sends `import minimoe` to the source
tree ahead of PYTHONPATH; the kernel is started without it (`BOOT`), so that it imports the
grader's pristine copy, first on its PYTHONPATH.
"""

import ctypes
import os
import resource
import shutil
import signal
import sys

PR_SET_PDEATHSIG = 1
BOOT = """\
import importlib.machinery, runpy, sys
def finds_minimoe(finder):
    try:
        return finder.find_spec("minimoe", None) is not None
    except Exception:
        return False
sys.meta_path[:] = [
    f for f in sys.meta_path if f is importlib.machinery.PathFinder or not finds_minimoe(f)
]
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def main(argv: list[str]) -> None:
    memory, uid, gid, home = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    cmd = argv[argv.index("--") + 1 :]
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid >= 0:
        at = cmd.index("-f") + 1
        copy = os.path.join(home, "kernel-connection.json")
        shutil.copyfile(cmd[at], copy)
        os.chown(copy, uid, gid)
        cmd[at] = copy
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    try:  # the kernel dies with the process that started it (a changed uid clears this: set last)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if cmd[1:2] == ["-m"]:  # python -m MODULE ARGS -> python -c BOOT MODULE ARGS
        cmd = [cmd[0], "-c", BOOT, *cmd[2:]]
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
