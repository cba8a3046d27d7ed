"""Start W processes that form one `torch.distributed` process group, and collect their results.

    results = launch(fn, world_size=2, args=(...,))   # fn(rank, world_size, *args) in each process

The processes are forked from this one on Linux (they start at once, with everything imported,
and `fn` may even be defined in a notebook), or spawned as fresh interpreters for CUDA (a forked
child cannot use CUDA) and where fork does not exist. Each joins the group through a TCP store
on a free port of 127.0.0.1, with the gloo backend on a CPU and NCCL when `device="cuda"` (one
GPU per rank), then runs `fn` and hands its return value back (through a file, so it may be any
object `torch.save` accepts).

A failure in one rank ends all ranks (no hang): `torch.multiprocessing.start_processes` kills
the others as soon as one exits with an error, and `launch` raises `RankFailed` carrying that
rank's traceback. Two timeouts guard what that cannot see: the process group's own (a
collective that waits longer for a peer fails; `timeout_s`) and the launcher's wall clock
(`wall_timeout_s`), after which every rank is killed.

torchrun does the same job from the command line (`torchrun --nproc-per-node 2 script.py`);
starting the processes from Python lets a notebook, a test or `python -m minimoe ep` run W ranks
without a second command.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from minimoe.validate import check_choice, check_int, check_real


class RankFailed(RuntimeError):
    """A rank raised (or died); the message holds its rank and traceback."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank} failed:\n{message}")
        self.rank = rank


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device: str) -> str:
    """gloo for CPU tensors, NCCL for CUDA tensors (the backend follows the device)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _entry(
    rank: int,
    world_size: int,
    port: int,
    device: str,
    timeout_s: float,
    threads: int,
    out_dir: str,
    fn: Callable[..., Any],
    args: tuple,
) -> None:
    """What each spawned process runs: join the group, run fn, save its result or its error."""
    torch.set_num_threads(threads)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        backend_for(device),
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException:
        (Path(out_dir) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise
    finally:
        # a failed rank leaves without the barrier; the launcher ends the others
        if not (Path(out_dir) / f"rank{rank}.err").exists():
            dist.barrier()
        dist.destroy_process_group()


def launch(
    fn: Callable[..., Any],
    world_size: int,
    args: tuple = (),
    *,
    device: str = "cpu",
    timeout_s: float = 60.0,
    wall_timeout_s: float = 300.0,
    threads: int = 1,
    start_method: str | None = None,
) -> list[Any]:
    """Run fn(rank, world_size, *args) in `world_size` new processes; return their results.

    Args:
        fn: a function defined at the top level of a module (it is pickled by name).
        world_size: W >= 1.
        args: more arguments for fn (picklable).
        device: "cpu" (gloo) or "cuda" (NCCL, rank w on GPU w mod the GPU count).
        timeout_s: the process group's timeout: a collective waiting longer fails.
        wall_timeout_s: kill every rank after this long.
        threads: torch CPU threads per process (1: W processes share the cores).
        start_method: "fork" (the default on Linux for CPU runs: the processes inherit the
            imported modules, so they start in a fraction of a second, and fn may be defined
            in a notebook) or "spawn" (fresh interpreters that import everything again, seconds
            each; the default for CUDA, which cannot be used in a forked child, and where fork
            is not available).

    Returns:
        [fn's return value on rank 0, ..., on rank W-1].

    Raises:
        RankFailed: the first rank that failed, with its traceback; the other ranks are ended.
        TimeoutError: the ranks ran past wall_timeout_s (all are killed).
    """
    W = check_int("world_size", world_size, low=1)
    check_choice("device", torch.device(device).type, ("cpu", "cuda"))
    timeout_s = check_real("timeout_s", timeout_s, low=0.0, low_open=True)
    wall_timeout_s = check_real("wall_timeout_s", wall_timeout_s, low=0.0, low_open=True)
    check_int("threads", threads, low=1)
    if start_method is None:
        cpu = torch.device(device).type == "cpu"
        start_method = "fork" if cpu and "fork" in mp.get_all_start_methods() else "spawn"
    check_choice("start_method", start_method, ("fork", "spawn", "forkserver"))
    with tempfile.TemporaryDirectory(prefix="minimoe-ep-") as out_dir:
        context = mp.start_processes(
            _entry,
            args=(W, free_port(), device, timeout_s, threads, out_dir, fn, args),
            nprocs=W,
            join=False,
            start_method=start_method,
        )
        deadline = time.monotonic() + wall_timeout_s
        try:
            while not context.join(timeout=0.2):  # join raises as soon as one rank fails
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the {W} ranks ran past wall_timeout_s={wall_timeout_s}")
        except ProcessException as exc:
            # the first rank to fail is the cause; the others may fail after it, in a
            # collective that lost its peer ("Connection closed by peer"), and be seen first
            errors = sorted(Path(out_dir).glob("rank*.err"), key=lambda p: p.stat().st_mtime_ns)
            if errors:
                rank = int(errors[0].stem.removeprefix("rank"))
                raise RankFailed(rank, errors[0].read_text()) from None
            raise RankFailed(exc.error_index, str(exc)) from None
        finally:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
                p.join()
        return [torch.load(Path(out_dir) / f"rank{w}.pt", weights_only=False) for w in range(W)]
