"""Grade submitted exercise notebooks against the canonical checks in solutions/.

    python -m minimoe grade PATH... [--solutions DIR] [--timeout S] [--budget S] [--memory-gb G]
                                    [--jobs N] [--json OUT] [--csv OUT]

PATH is a notebook or a folder of them (a classroom's submissions, `alice_01_topic.ipynb` or
`alice/01_topic.ipynb`). Each submission is matched to `solutions/NN_*.ipynb` by the notebook
metadata `minimoe.chapter`, else the chapter number `NN_` in its file name, else the exercise
numbers of its check cells.

What an instructor can rely on:

- **Every submission becomes rows**, whatever it contains: a notebook saved as UTF-16 or UTF-32 is
  decoded by its byte-order mark; a zip renamed .ipynb, invalid JSON or text that is not UTF-8 is
  an error row with the reason; null or odd metadata (`"tags": null`) is read as absent. Every
  submission is read into memory before the first is run, and each result is written to the JSON
  and CSV reports as soon as it is known, so a run that is killed keeps what it graded.
- **Canonical checks at their canonical place.** The graded notebook is the learner's, with every
  cell tagged `check` removed and each canonical check of the solution put right after the
  learner's answer cell of its exercise (the last one tagged `answer` with that exercise). When
  that answer cell is gone the exercise fails with "the answer cell of exercise 01.2 is missing";
  when the answer cell does not define the name the check tests (renamed, or typed into another
  cell) the check fails saying so, instead of testing a name left over from an earlier cell.
- **Positive evidence.** Each check runs through `minimoe.course.guard` with a nonce fresh for
  every notebook; an exercise passes only when its check cell ran cleanly *and* printed the
  evidence line with that nonce. A check whose kernel was tampered with (a check function or the
  comparison helper replaced, a custom exception handler, an input or AST transformer, a patched
  torch function, a tensor subclass returned, the check patched while it runs, its pass never
  confirmed) fails with a reason that starts "check tampered with".
- **Isolation** (`minimoe.course.sandbox`): kernels import a read-only pristine copy of `minimoe`,
  checked file by file against its snapshot after every notebook (restored, and the notebook
  failed, when it changed); the canonical checks come from the solutions read into memory when the
  run starts (the folder is checked and restored the same way). Each notebook runs in a worker
  process in a session of its own, with a fresh scratch folder as working directory, a time budget
  for the whole notebook (`--budget`) besides the per-cell `--timeout`, and an address-space limit
  per kernel (`--memory-gb`); a kernel that dies, or kills its parent or its process group, fails
  that notebook alone. As root, kernels also run as an unprivileged user of their own, when that
  user can run this Python.

An exercise's hint is the last line of its check's failure. Left out: an attacker who studies the
guard and targets it from inside the kernel (see `minimoe.course.guard`); without root, a kernel
that looks up the grader's own process to signal it.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import multiprocessing
import os
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from minimoe.course.guard import evidence
from minimoe.course.notebooks import cell_meta, has_tag
from minimoe.course.report import Row, format_table, write_csv, write_json
from minimoe.course.runner import REPO_ROOT, CellRun, run_cells
from minimoe.course.sandbox import SANDBOX_UID, Box, Pristine, can_run_as, remove_tree
from minimoe.course.submission import (
    SubmissionError,
    chapter_of,
    find_submissions,
    load_submission,
)

# Notebooks graded at once by the command: one kernel per core (each kernel runs on one thread).
DEFAULT_JOBS = max(1, min(4, os.cpu_count() or 1))
TAMPERED = "check tampered with"
GRACE_S = 20  # beyond the budget, before a worker is killed from outside
FIRST_CELL_TIMEOUT_S = 120  # the guard's first cell imports torch and the checks


# --- the graded notebook ------------------------------------------------------------------------------


def names_tested(check_source: str) -> list[str]:
    """The learner's answers a check cell tests: the plain names passed to its calls that the
    cell does not bind itself (`check_loop_moe(loop_moe)` -> ["loop_moe"])."""
    try:
        tree = ast.parse(check_source)
    except SyntaxError:
        return []
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
    passed = [
        arg.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for arg in [*node.args, *(k.value for k in node.keywords)]
        if isinstance(arg, ast.Name)
    ]
    return [n for n in dict.fromkeys(passed) if n not in bound and not hasattr(builtins, n)]


def _guard_call(function: str, *args, namespace: bool = True) -> str:
    """One line that calls minimoe.course.guard.`function`(*args[, globals()]) without binding a
    name in the learner's namespace."""
    call_args = [*map(repr, args), *(["globals()"] if namespace else [])]
    return (
        f"__import__('minimoe.course.guard', fromlist=['{function}']).{function}("
        + ", ".join(call_args)
        + ")"
    )


@dataclass
class GradedNotebook:
    """The notebook the grader runs and what its cells are.

    Attributes:
        nb: the notebook.
        checks: {cell index: check cell metadata} of every canonical check in it.
        missing: the metadata of the checks whose answer cell is gone (not run: failed).
        grader_cells: indices of the cells the grader added (the first cell, the markers before
            answers, the checks).
    """

    nb: NotebookNode
    checks: dict[int, dict]
    missing: list[dict] = field(default_factory=list)
    grader_cells: set[int] = field(default_factory=set)


def graded_notebook(
    submission: NotebookNode, solution: NotebookNode, nonce: str = "0" * 32
) -> GradedNotebook:
    """The learner's cells without their check cells, with the canonical checks put back."""

    def copy(cell: NotebookNode) -> NotebookNode:
        return nbformat.from_dict(json.loads(json.dumps(cell)))

    def grader_cell(source: str, meta: dict | None = None) -> NotebookNode:
        return nbformat.v4.new_code_cell(
            source, metadata={"minimoe": {"grader": True, **(meta or {})}}
        )

    cells: list[tuple[NotebookNode, str]] = [
        (copy(c), "learner") for c in submission.cells if not has_tag(c, "check")
    ]
    by_exercise: dict[str, list[NotebookNode]] = {}
    for check in solution.cells:
        if check.cell_type == "code" and has_tag(check, "check"):
            by_exercise.setdefault(str(cell_meta(check).get("exercise")), []).append(check)
    missing: list[dict] = []
    for exercise, checks in by_exercise.items():
        answers = [
            i
            for i, (c, role) in enumerate(cells)
            if role == "learner"
            and c.cell_type == "code"
            and has_tag(c, "answer")
            and cell_meta(c).get("exercise") == exercise
        ]
        if not answers:
            missing += [dict(cell_meta(c)) for c in checks]
            continue
        at = answers[-1]
        names = list(dict.fromkeys(n for c in checks for n in names_tested(c.source)))
        canonical = [
            (
                grader_cell(
                    f"# the canonical check of exercise {exercise}, put back by the grader\n"
                    + _guard_call("run_check", exercise, nonce, c.source, names),
                    dict(cell_meta(c)),
                ),
                "check",
            )
            for c in checks
        ]
        cells[at + 1 : at + 1] = canonical
        cells.insert(at, (grader_cell(_guard_call("before_answer", names)), "grader"))
    cells.insert(0, (grader_cell(_guard_call("arm", namespace=False)), "grader"))
    nb = nbformat.v4.new_notebook(cells=[c for c, _ in cells])
    return GradedNotebook(
        nb,
        {i: cell_meta(c) for i, (c, role) in enumerate(cells) if role == "check"},
        missing,
        {i for i, (_, role) in enumerate(cells) if role != "learner"},
    )


# --- rows ------------------------------------------------------------------------------------------


def _error_row(path: Path, student: str, chapter: str | None, message: str) -> Row:
    return Row(student, str(path), chapter or "", "", "", False, 0, 0, message)


def check_verdict(run: CellRun, nonce: str, exercise: str) -> tuple[bool, str]:
    """(passed, hint) of one canonical check cell's run."""
    if run.status == "ok":
        if evidence(nonce, exercise) in run.stdout.splitlines():
            return True, ""
        return False, (
            f"{TAMPERED}: the check cell ran but never confirmed a pass (a hook set by an "
            "earlier cell changed or silenced it)"
        )
    if run.ename == "CheckTampered":
        lines = [line.strip() for line in run.evalue.splitlines() if line.strip()]
        return False, lines[-1] if lines else TAMPERED
    return False, run.hint


def _rows(job: _Job, outcome: dict[int, tuple[bool, str]]) -> list[Row]:
    """One row per exercise: points from each check cell's (passed, hint)."""
    rows: dict[str, Row] = {}
    metas = [(i, m) for i, m in job.graded.checks.items()] + [(None, m) for m in job.graded.missing]
    for i, meta in sorted(metas, key=lambda im: job.order.get(str(im[1].get("exercise")), 0)):
        exercise = str(meta.get("exercise", "?"))
        points = meta.get("points", 1)
        row = rows.setdefault(
            exercise,
            Row(
                job.student,
                str(job.path),
                job.chapter,
                exercise,
                str(meta.get("title") or exercise),
                True,
                0,
                0,
                "",
            ),
        )
        row.max_points += points
        passed, hint = (
            outcome[i]
            if i is not None
            else (
                False,
                f"the answer cell of exercise {exercise} is missing (the cell tagged "
                "`answer` for it was deleted or untagged), so its check cannot run",
            )
        )
        if passed:
            row.points += points
        else:
            row.passed = False
            row.hint = row.hint or hint
    return list(rows.values())


def _failed_rows(job: _Job, reason: str) -> list[Row]:
    return _rows(job, {i: (False, reason) for i in job.graded.checks})


# --- one notebook in a worker process -----------------------------------------------------------


@dataclass
class _Job:
    index: int
    path: Path
    student: str
    chapter: str = ""
    graded: GradedNotebook | None = None
    nonce: str = ""
    order: dict[str, int] = field(default_factory=dict)
    rows: list[Row] | None = None
    # while it runs
    slot: int = -1
    process: multiprocessing.Process | None = None
    scratch: Path | None = None  # the kernel's working folder and home
    private: Path | None = None  # the worker's result and the kernels' ids: no kernel writes here
    started: float = 0.0


def _worker(job: _Job, box: Box, timeout: float, budget: float, result: Path, pids: Path) -> None:
    """Run one graded notebook (in a forked process, in a session of its own) and write what
    every cell did to `result` as JSON."""
    os.setsid()

    def record(pid: int) -> None:
        with open(pids, "a") as f:
            f.write(f"{pid}\n")

    try:
        runs = run_cells(
            job.graded.nb,
            cwd=job.scratch,
            timeout=timeout,
            budget=budget,
            env=box.kernel_env(job.scratch),
            kernel_prefix=box.kernel_prefix(job.slot, job.scratch),
            no_replay=set(job.graded.checks),
            on_kernel=record,
            cell_timeouts={0: max(timeout, FIRST_CELL_TIMEOUT_S)},
        )
        data = {"runs": [asdict(r) for r in runs]}
    except Exception as err:  # a kernel that cannot start: the grader's problem, reported
        data = {"error": f"could not run the notebook: {type(err).__name__}: {err}"}
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(result)
    os._exit(0)


def _kill_kernels(pids: Path, uid: int) -> None:
    """SIGKILL every process group a notebook's kernels started, and every process of its user."""
    if pids.exists():
        for line in pids.read_text().split():
            try:
                os.killpg(int(line), signal.SIGKILL)
            except (ValueError, OSError):
                pass
    if uid < 0:
        return
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == uid:
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            pass


# --- the run ------------------------------------------------------------------------------------


class Reports:
    """The JSON and CSV reports, brought up to date after every notebook."""

    def __init__(self, json_path: Path | None, csv_path: Path | None) -> None:
        self.json_path, self.csv_path = json_path, csv_path
        self.rows: list[Row] = []
        self.write()

    def add(self, rows: list[Row]) -> None:
        self.rows += rows
        self.write()

    def write(self, rows: list[Row] | None = None) -> None:
        rows = self.rows if rows is None else rows
        if self.json_path:
            write_json(rows, self.json_path)
        if self.csv_path:
            write_csv(rows, self.csv_path)


def _prepare(
    job: _Job, data: bytes | None, read_error: str, solutions: dict[str, NotebookNode]
) -> None:
    """Parse the submission and build its graded notebook, or set its error row."""
    if data is None:
        job.rows = [
            _error_row(job.path, job.student, None, f"could not read the file: {read_error}")
        ]
        return
    try:
        submission = load_submission(data)
    except SubmissionError as err:
        job.rows = [_error_row(job.path, job.student, None, str(err))]
        return
    chapter = chapter_of(job.path, submission, known=solutions.keys())
    if chapter is None:
        job.rows = [
            _error_row(
                job.path,
                job.student,
                None,
                "cannot tell the chapter: name the file "
                "NN_topic.ipynb or set the notebook metadata minimoe.chapter",
            )
        ]
        return
    job.chapter = chapter
    if chapter not in solutions:
        job.rows = [
            _error_row(
                job.path,
                job.student,
                chapter,
                f"unknown chapter {chapter}: no solutions/{chapter}_*.ipynb",
            )
        ]
        return
    solution = solutions[chapter]
    job.nonce = secrets.token_hex(16)
    job.graded = graded_notebook(submission, solution, job.nonce)
    exercises = [str(cell_meta(c).get("exercise")) for c in solution.cells if has_tag(c, "check")]
    job.order = {e: i for i, e in enumerate(dict.fromkeys(exercises))}


def grade(
    paths: list[str | Path],
    solutions_dir: str | Path,
    timeout: float = 60,
    *,
    budget: float = 600,
    memory_gb: float = 8,
    jobs: int = 1,
    json_out: str | Path | None = None,
    csv_out: str | Path | None = None,
    progress=None,
) -> list[Row]:
    """Grade every notebook under `paths`: one `Row` per exercise (or per unreadable notebook),
    in the order of the submissions. See the module's docstring for what is guaranteed.

    Args:
        timeout: seconds one cell may run.
        budget: seconds one notebook may run in all.
        memory_gb: address-space limit of a kernel (0: none).
        jobs: notebooks graded at once.
        json_out, csv_out: reports rewritten after every notebook.
        progress: called with a line of text after every notebook (e.g. print to stderr).
    """
    solutions_dir = Path(solutions_dir)
    solution_bytes = {p: p.read_bytes() for p in sorted(solutions_dir.glob("[0-9][0-9]_*.ipynb"))}
    solutions: dict[str, NotebookNode] = {}
    for p, data in solution_bytes.items():
        solutions.setdefault(p.name[:2], load_submission(data))
    submissions = find_submissions(paths)
    queue: list[_Job] = []
    for index, (path, student) in enumerate(submissions):  # every file read before any runs
        job = _Job(index, path, student)
        try:
            data, error = path.read_bytes(), ""
        except OSError as err:
            data, error = None, str(err)
        try:
            _prepare(job, data, error, solutions)
        except Exception as err:  # a submission odd enough to trip the grader: its row, not a crash
            job.graded = None
            job.rows = [_error_row(path, student, None, f"could not prepare it for grading: {err}")]
        queue.append(job)
    reports = Reports(Path(json_out) if json_out else None, Path(csv_out) if csv_out else None)
    done: list[_Job] = []
    session = Path(tempfile.mkdtemp(prefix="minimoe-grade-"))
    session.chmod(0o755)
    try:
        jobs = max(1, int(jobs))
        other_user = can_run_as(SANDBOX_UID) if any(j.graded for j in queue) else False
        if progress is not None and not other_user and os.name == "posix" and os.geteuid() == 0:
            progress(
                f"note: kernels run as root (user {SANDBOX_UID} cannot run {sys.executable}): "
                "a kernel cannot change another notebook's grade, but could signal the grader"
            )
        pristine = [Pristine(session / f"pristine-{slot}") for slot in range(jobs)]
        boxes = [
            Box(
                p.root,
                memory_gb,
                other_user,
                threads=max(1, (os.cpu_count() or 1) // jobs),
                scratch_parent=session,
            )
            for p in pristine
        ]
        running: dict[int, _Job] = {}
        waiting = list(queue)

        def finish(job: _Job, rows: list[Row]) -> None:
            job.rows = rows
            done.append(job)
            reports.add(rows)
            if progress is not None:
                got = sum(r.points for r in rows)
                out_of = sum(r.max_points for r in rows)
                took = f" in {time.monotonic() - job.started:.1f} s" if job.started else ""
                progress(f"graded {len(done)}/{len(queue)} {job.path}: {got:g}/{out_of:g}{took}")

        while waiting or running:
            while waiting and not waiting[0].graded:
                job = waiting.pop(0)
                finish(job, job.rows)
            free = [s for s in range(jobs) if s not in running]
            if waiting and free:
                job = waiting.pop(0)
                job.slot = free[0]
                job.scratch = boxes[job.slot].scratch(job.slot)
                job.private = session / f"job-{job.index}"
                job.private.mkdir(mode=0o700)
                job.started = time.monotonic()
                job.process = multiprocessing.get_context("fork").Process(
                    target=_worker,
                    args=(
                        job,
                        boxes[job.slot],
                        timeout,
                        budget,
                        job.private / "result.json",
                        job.private / "pids",
                    ),
                    daemon=True,
                )
                job.process.start()
                running[job.slot] = job
                continue
            if not running:
                continue
            wait([j.process.sentinel for j in running.values()], timeout=1.0)
            for slot, job in list(running.items()):
                late = time.monotonic() - job.started > budget + GRACE_S
                if job.process.is_alive() and not late:
                    continue
                if job.process.is_alive():
                    job.process.kill()
                job.process.join()
                del running[slot]
                try:
                    rows = _collect(job, boxes[slot], pristine[slot], solution_bytes, late, budget)
                except Exception as err:  # never lose the run to one notebook
                    rows = _failed_rows(job, f"the grader could not read its result: {err}")
                finish(job, rows)
    finally:
        for job in queue:
            if job.process is not None and job.process.is_alive():
                job.process.kill()
        remove_tree(session)
    rows = [r for job in sorted(done, key=lambda j: j.index) for r in (job.rows or [])]
    reports.write(rows)
    return rows


def _collect(
    job: _Job,
    box: Box,
    pristine: Pristine,
    solution_bytes: dict[Path, bytes],
    late: bool,
    budget: float,
) -> list[Row]:
    """The rows of a finished (or killed) worker, after cleaning up and checking the copies."""
    result, pids = job.private / "result.json", job.private / "pids"
    _kill_kernels(pids, box.uid(job.slot))
    data = None
    if result.exists():
        try:
            data = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            data = None
    remove_tree(job.scratch)
    tampered = [f"minimoe/{Path(f).relative_to('minimoe').as_posix()}" for f in pristine.changed()]
    if tampered:
        pristine.restore()
    for path, original in solution_bytes.items():
        try:
            same = path.read_bytes() == original
        except OSError:
            same = False
        if not same:
            tampered.append(str(path))
            path.write_bytes(original)
    if tampered:
        return _failed_rows(
            job,
            f"{TAMPERED}: the notebook wrote into the grader's files ({', '.join(tampered[:3])})",
        )
    if late:
        return _failed_rows(
            job, f"the notebook ran past its time budget of {budget:g} s and was stopped"
        )
    if data is None:
        code = job.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return _failed_rows(
            job,
            f"the notebook's grading process ended early ({how}): a cell may have killed its parent process or process group",
        )
    if "error" in data:
        return _failed_rows(job, data["error"])
    runs = {r["index"]: CellRun(**r) for r in data["runs"]}
    outcome = {
        i: check_verdict(runs[i], job.nonce, str(m.get("exercise")))
        for i, m in job.graded.checks.items()
    }
    return _rows(job, outcome)


def default_solutions_dir() -> Path:
    """./solutions when it exists, else the solutions/ beside the minimoe package."""
    here = Path("solutions")
    return here if here.is_dir() else REPO_ROOT / "solutions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `grade` subcommand's arguments."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="notebooks or folders of them")
    parser.add_argument(
        "--solutions",
        type=Path,
        default=None,
        help="folder of the canonical solutions (default: ./solutions)",
    )
    parser.add_argument("--timeout", type=float, default=60, help="seconds per cell (default 60)")
    parser.add_argument(
        "--budget", type=float, default=600, help="seconds per notebook in all (default 600)"
    )
    parser.add_argument(
        "--memory-gb",
        type=float,
        default=8,
        help="address-space limit of each kernel in GiB, 0 for none (default 8)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"notebooks graded at once (default {DEFAULT_JOBS}: the CPU cores, at most 4)",
    )
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the rows as JSON")
    parser.add_argument("--csv", type=Path, metavar="OUT", help="write the rows as CSV")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Grade, print the tables, write the reports. 0 even when exercises fail."""
    for p in args.paths:
        if not Path(p).exists():
            parser.error(f"no such file or folder: {p}")
    solutions = args.solutions or default_solutions_dir()
    if not solutions.is_dir():
        parser.error(f"solutions folder not found: {solutions} (use --solutions DIR)")
    if not args.timeout > 0:
        parser.error("--timeout must be > 0")
    if not args.budget > 0:
        parser.error("--budget must be > 0")
    if not args.memory_gb >= 0:
        parser.error("--memory-gb must be >= 0")
    if not args.jobs >= 1:
        parser.error("--jobs must be >= 1")
    if not find_submissions(args.paths):
        parser.error(f"no notebooks found under {' '.join(map(str, args.paths))}")
    rows = grade(
        args.paths,
        solutions,
        args.timeout,
        budget=args.budget,
        memory_gb=args.memory_gb,
        jobs=args.jobs,
        json_out=args.json,
        csv_out=args.csv,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_table(rows))
    return 0
