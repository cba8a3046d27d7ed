"""A byte-level text corpus with no download: CPython standard-library source files.

Every Python install carries its standard library as source, so the corpus is real text (code
and English docstrings) read from the running interpreter's `sysconfig.get_paths()["stdlib"]`.
`STDLIB_FILES` is the fixed list: pure-Python modules present, as files, in CPython 3.10 to 3.13
(none of them became a package or was removed in that range), about 2.4 MB in 3.11. Their text
differs a little between Python versions, so the corpus is deterministic for one interpreter,
not across interpreters.

Tokens are bytes (vocabulary 256), as in byte-level models such as ByT5 (arXiv 2105.13626): no
tokenizer to train or ship, and every file is valid input.

The split is by position: the last `val_fraction` of each file is validation, the rest training.
Every module then appears on both sides, so the validation loss measures how well the model
continues files it has seen the start of. A split by whole files would put two or three modules
in validation and make the validation loss depend on which ones they were.

If some listed files are missing (a trimmed install), the rest are used and `Corpus.missing`
says which. If fewer than `MIN_BYTES` remain (an install without stdlib sources), the corpus
falls back to the source files of the installed `minimoe` package itself, and says so.

Left out: tokenizers (BPE), document boundaries and shuffling across files.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Paths relative to the stdlib directory, grouped by theme; their order is the corpus order.
STDLIB_FILES: tuple[str, ...] = (
    # text and data formats
    "textwrap.py",
    "string.py",
    "shlex.py",
    "csv.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "base64.py",
    "html/parser.py",
    "configparser.py",
    "tokenize.py",
    "pprint.py",
    "reprlib.py",
    "keyword.py",
    "difflib.py",
    "gettext.py",
    # language and functional tools
    "abc.py",
    "numbers.py",
    "operator.py",
    "functools.py",
    "contextlib.py",
    "copy.py",
    "weakref.py",
    "dataclasses.py",
    "enum.py",
    "typing.py",
    "collections/__init__.py",
    "heapq.py",
    "bisect.py",
    "graphlib.py",
    "inspect.py",
    "ast.py",
    "dis.py",
    "traceback.py",
    "linecache.py",
    # numbers and time
    "fractions.py",
    "statistics.py",
    "random.py",
    "secrets.py",
    "hmac.py",
    "calendar.py",
    "timeit.py",
    "sched.py",
    # files, processes and the system
    "stat.py",
    "posixpath.py",
    "fnmatch.py",
    "glob.py",
    "shutil.py",
    "tempfile.py",
    "tarfile.py",
    "subprocess.py",
    "threading.py",
    "queue.py",
    "codecs.py",
    # programs, testing and debugging
    "argparse.py",
    "optparse.py",
    "cmd.py",
    "logging/__init__.py",
    "unittest/case.py",
    "doctest.py",
    "pdb.py",
    "trace.py",
    # the network
    "ipaddress.py",
    "urllib/parse.py",
    "http/client.py",
    "email/message.py",
)

MIN_BYTES = 100_000  # below this (and below max_bytes), fall back to minimoe's own sources


@dataclass
class Corpus:
    """A byte-level corpus split into training and validation bytes.

    Attributes:
        train_U8: training bytes, uint8 (the first 1 - val_fraction of each file, concatenated).
        val_U8: validation bytes, uint8 (the last val_fraction of each file, concatenated).
        files: the files used, in corpus order (relative to `root`).
        missing: listed files that were not found.
        n_bytes: bytes used in all (train + val).
        root: the directory the files were read from.
        fallback: True when the stdlib files were too few and minimoe's own sources were used.
        val_fraction: the fraction of each file held out for validation.
    """

    train_U8: torch.Tensor
    val_U8: torch.Tensor
    files: list[str]
    missing: list[str] = field(default_factory=list)
    n_bytes: int = 0
    root: str = ""
    fallback: bool = False
    val_fraction: float = 0.1

    def describe(self) -> str:
        """A few lines: where the text came from, which files, how many bytes in each split."""
        source = "minimoe's own sources (fallback)" if self.fallback else "the Python stdlib"
        shown = ", ".join(self.files[:6]) + (", ..." if len(self.files) > 6 else "")
        lines = [
            f"corpus: {len(self.files)} file{'s' * (len(self.files) != 1)} from {source} at "
            f"{self.root}",
            f"  {shown}",
            f"  {self.n_bytes:,} bytes: {self.train_U8.numel():,} train, "
            f"{self.val_U8.numel():,} val (the last {self.val_fraction:.0%} of each file)",
        ]
        if self.missing:
            lines.append(
                f"  missing on this install ({len(self.missing)}): {', '.join(self.missing)}"
            )
        return "\n".join(lines)


def _frombytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def _minimoe_sources() -> tuple[Path, list[str]]:
    root = Path(__file__).resolve().parents[1]
    return root, sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))


def _read(root: Path, files: list[str], max_bytes: int | None) -> tuple[list[str], list[bytes]]:
    used, texts, total = [], [], 0
    for name in files:
        if max_bytes is not None and total >= max_bytes:
            break
        data = (root / name).read_bytes()
        if max_bytes is not None:
            data = data[: max_bytes - total]
        used.append(name)
        texts.append(data)
        total += len(data)
    return used, texts


def build_corpus(
    files: tuple[str, ...] | list[str] = STDLIB_FILES,
    *,
    val_fraction: float = 0.1,
    max_bytes: int | None = None,
    root: str | Path | None = None,
) -> Corpus:
    """Read the files and split each into a training head and a validation tail.

    Args:
        files: paths relative to `root` (default: `STDLIB_FILES`).
        val_fraction: the fraction of each file held out, in (0, 1).
        max_bytes: read at most this many bytes in all (files in order, the last one cut short);
            None reads everything.
        root: the directory of the files (default: the running interpreter's stdlib).

    Returns:
        A `Corpus`; `describe()` says which files were used and how many bytes.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if max_bytes is not None and max_bytes < 2:
        raise ValueError(f"max_bytes must be >= 2 or None, got {max_bytes}")
    if isinstance(files, str):
        raise TypeError("files must be a list or tuple of paths, not one string")
    root_path = stdlib_root() if root is None else Path(root)
    present = [f for f in files if (root_path / f).is_file()]
    missing = [f for f in files if not (root_path / f).is_file()]
    used, texts = _read(root_path, present, max_bytes)
    fallback = False
    if sum(map(len, texts)) < min(MIN_BYTES, max_bytes or MIN_BYTES):
        fallback = True
        root_path, sources = _minimoe_sources()
        used, texts = _read(root_path, sources, max_bytes)
    train, val = [], []
    for data in texts:
        n_val = round(len(data) * val_fraction)
        train.append(data[: len(data) - n_val])
        val.append(data[len(data) - n_val :])

    def to_u8(parts: list[bytes]) -> torch.Tensor:
        data = b"".join(parts)
        return _frombytes(data) if data else torch.zeros(0, dtype=torch.uint8)

    train_U8, val_U8 = to_u8(train), to_u8(val)
    return Corpus(
        train_U8=train_U8,
        val_U8=val_U8,
        files=used,
        missing=missing,
        n_bytes=train_U8.numel() + val_U8.numel(),
        root=str(root_path),
        fallback=fallback,
        val_fraction=val_fraction,
    )


def get_batch(
    data_U8: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of windows and their next bytes.

    Args:
        data_U8: a 1-D uint8 tensor of bytes (`corpus.train_U8` or `corpus.val_U8`).
        batch_size: B.
        seq_len: S.
        generator: a seeded `torch.Generator` (CPU); the same seed gives the same batch.

    Returns:
        (x_BS, y_BS), int64: y_BS[b, s] = x_BS[b, s + 1], the byte after x's last one at s = S-1.
    """
    if data_U8.dim() != 1 or data_U8.dtype != torch.uint8:
        raise ValueError(
            f"data_U8 must be a 1-D uint8 tensor, got {data_U8.dtype} {tuple(data_U8.shape)}"
        )
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if data_U8.numel() < seq_len + 1:
        raise ValueError(
            f"{data_U8.numel()} bytes are too few for windows of seq_len + 1 = {seq_len + 1}"
        )
    start_B = torch.randint(0, data_U8.numel() - seq_len, (batch_size,), generator=generator)
    index_BS = start_B[:, None] + torch.arange(seq_len + 1)
    window_BS = data_U8[index_BS].long()
    return window_BS[:, :-1], window_BS[:, 1:]


def unigram_loss(corpus: Corpus) -> float:
    """The baseline to beat: cross-entropy (nats/byte) of the validation bytes under the byte
    frequencies of the training bytes, with add-one smoothing (a byte unseen in training would
    otherwise cost infinitely much)."""
    counts_V = torch.bincount(corpus.train_U8.long(), minlength=256).double() + 1.0
    logp_V = (counts_V / counts_V.sum()).log()
    if corpus.val_U8.numel() == 0:
        raise ValueError("the corpus has no validation bytes")
    return float(-logp_V[corpus.val_U8.long()].mean())
