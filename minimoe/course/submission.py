"""Reading a submission, whatever it is: the notebooks under a path, their students, their
bytes as a clean notebook (any byte-order mark, nbformat 3 or 4, odd metadata read as absent),
and the chapter each belongs to. The grader (`minimoe.course.grade`) runs what this gives it; a
file that is not a notebook at all raises `SubmissionError` with the reason, which becomes the
submission's error row.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Collection
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from minimoe.course.notebooks import cell_meta

CHAPTER_IN_NAME = re.compile(r"(?<!\d)(\d{2})_")


class SubmissionError(ValueError):
    """A submission that cannot be read as a notebook (the message says why)."""


# --- reading a submission, whatever it is ----------------------------------------------------------


def find_submissions(paths: list[str | Path]) -> list[tuple[Path, str]]:
    """(notebook, student) for every notebook under `paths`, checkpoints left out.

    The student is the file name's prefix before the chapter number (`alice_01_x.ipynb`), else
    the sub-folder the notebook sits in below a given folder (`alice/01_x.ipynb`), else "".
    """
    found: list[tuple[Path, str]] = []
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(root.rglob("*.ipynb"))
        for path in files:
            if ".ipynb_checkpoints" in path.parts or not path.is_file():
                continue
            matches = list(CHAPTER_IN_NAME.finditer(path.name))  # the last is the chapter's
            student = path.name[: matches[-1].start()].strip("_- .") if matches else ""
            if not student and path != root and path.parent != root:
                student = path.parent.name
            found.append((path, student))
    return found


_BOMS = (  # longest first: the UTF-32 LE mark begins with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode(data: bytes) -> str:
    """The text of a notebook file: by its byte-order mark, else UTF-8.

    Raises:
        SubmissionError: a zip archive, or bytes that are not text in that encoding.
    """
    if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
        raise SubmissionError(
            "a zip archive, not a notebook: unzip it and hand in the .ipynb inside"
        )
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise SubmissionError(
            f"not {encoding.upper()} text ({err.reason} at byte {err.start})"
        ) from None


def _text(source) -> str:
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def _clean_cell(raw) -> NotebookNode | None:
    """A cell with only what grading needs, every odd field read as absent (None: not a cell)."""
    if not isinstance(raw, dict):
        return None
    meta = raw.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    tags = meta.get("tags")
    tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
    minimoe_meta = meta.get("minimoe")
    minimoe_meta = dict(minimoe_meta) if isinstance(minimoe_meta, dict) else {}
    if "exercise" in minimoe_meta:
        minimoe_meta["exercise"] = str(minimoe_meta["exercise"])
    clean_meta = {"tags": tags, "minimoe": minimoe_meta} if tags or minimoe_meta else {}
    source = _text(raw.get("source") if "source" in raw else raw.get("input"))
    if raw.get("cell_type") == "code":
        return nbformat.v4.new_code_cell(source, metadata=clean_meta)
    return nbformat.v4.new_markdown_cell(source, metadata=clean_meta)


def load_submission(data: bytes) -> NotebookNode:
    """A submitted file's bytes as a clean nbformat-4 notebook (outputs dropped).

    Raises:
        SubmissionError: with the reason, when it is not a notebook at all.
    """
    text = decode(data)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise SubmissionError(
            f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "was the notebook edited by hand or cut short?"
        ) from None
    if not isinstance(raw, dict):
        raise SubmissionError("not a notebook (the JSON is not an object)")
    cells = raw.get("cells")
    if cells is None and isinstance(raw.get("worksheets"), list):  # nbformat 3
        sheets = [w for w in raw["worksheets"] if isinstance(w, dict)]
        cells = [c for w in sheets for c in (w.get("cells") or [])]
    if not isinstance(cells, list):
        raise SubmissionError("not a notebook (no list of cells)")
    meta = raw.get("metadata")
    nb = nbformat.v4.new_notebook()
    nb.metadata = (
        {"minimoe": meta["minimoe"]} if isinstance(meta, dict) and "minimoe" in meta else {}
    )
    nb.cells = [c for c in map(_clean_cell, cells) if c is not None]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nb


def chapter_of(path: Path, nb: NotebookNode, known: Collection[str] | None = None) -> str | None:
    """The chapter "NN": metadata minimoe.chapter if it is one, else the `NN_` in the file name
    (the last one, or the last of the `known` chapters when the name has several:
    `student91_01_dense.ipynb` is chapter 01), else the chapter of the exercise numbers ("06.2")
    on the notebook's check cells, when they agree (a learner may rename the file:
    `alice_06.ipynb`)."""
    meta = nb.metadata.get("minimoe", {})
    chapter = meta.get("chapter") if isinstance(meta, dict) else None
    if isinstance(chapter, int) and not isinstance(chapter, bool) and 0 <= chapter < 100:
        return f"{chapter:02d}"
    if isinstance(chapter, str) and re.fullmatch(r"\d{2}", chapter):
        return chapter
    in_name = [m.group(1) for m in CHAPTER_IN_NAME.finditer(path.name)]
    if known is not None and any(c in known for c in in_name):
        in_name = [c for c in in_name if c in known]
    if in_name:
        return in_name[-1]
    chapters = set()
    for cell in nb.cells:
        exercise = cell_meta(cell).get("exercise")
        if isinstance(exercise, str) and re.fullmatch(r"\d{2}\.\d+", exercise):
            chapters.add(exercise[:2])
    return chapters.pop() if len(chapters) == 1 else None
