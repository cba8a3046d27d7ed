"""The byte corpus: the listed stdlib files, the per-file split, missing files, batches, baseline."""

import math
import sysconfig
from pathlib import Path

import pytest
import torch

from minimoe.lm import data as lm_data
from minimoe.lm.data import STDLIB_FILES, build_corpus, get_batch, unigram_loss


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text)


def test_stdlib_files_exist_here_and_weigh_one_to_three_megabytes():
    root = Path(sysconfig.get_paths()["stdlib"])
    assert len(set(STDLIB_FILES)) == len(STDLIB_FILES)
    assert all(name.endswith(".py") and not name.startswith("/") for name in STDLIB_FILES)
    missing = [name for name in STDLIB_FILES if not (root / name).is_file()]
    assert missing == []
    total = sum((root / name).stat().st_size for name in STDLIB_FILES)
    assert 1_000_000 <= total <= 3_000_000


def test_split_is_the_tail_of_each_file(tmp_path):
    _write(tmp_path, {"a.py": b"0123456789" * 3, "pkg/b.py": b"abcdefghij"})
    corpus = build_corpus(["a.py", "pkg/b.py"], root=tmp_path, val_fraction=0.2, max_bytes=40)
    assert bytes(corpus.train_U8.tolist()) == b"0123456789" * 2 + b"0123" + b"abcdefgh"
    assert bytes(corpus.val_U8.tolist()) == b"456789" + b"ij"
    assert corpus.files == ["a.py", "pkg/b.py"] and corpus.missing == []
    assert corpus.n_bytes == 40 and not corpus.fallback
    assert corpus.train_U8.dtype == torch.uint8


def test_max_bytes_cuts_the_files_in_order(tmp_path):
    _write(tmp_path, {"a.py": b"a" * 30, "b.py": b"b" * 30, "c.py": b"c" * 30})
    corpus = build_corpus(["a.py", "b.py", "c.py"], root=tmp_path, max_bytes=40)
    assert corpus.files == ["a.py", "b.py"] and corpus.n_bytes == 40
    assert int((corpus.train_U8 == ord("b")).sum() + (corpus.val_U8 == ord("b")).sum()) == 10


def test_corpus_is_deterministic_and_describes_itself():
    a, b = build_corpus(max_bytes=50_000), build_corpus(max_bytes=50_000)
    assert torch.equal(a.train_U8, b.train_U8) and torch.equal(a.val_U8, b.val_U8)
    assert a.files == list(STDLIB_FILES[: len(a.files)])
    text = a.describe()
    assert a.train_U8.numel() + a.val_U8.numel() == 50_000
    assert abs(a.val_U8.numel() - 5_000) <= len(a.files)  # each file's tail is rounded
    assert "textwrap.py" in text and "50,000 bytes" in text
    assert f"{a.train_U8.numel():,} train, {a.val_U8.numel():,} val" in text
    assert "Python stdlib" in text and "missing" not in text


def test_a_missing_file_is_skipped_and_reported(tmp_path, monkeypatch):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB_FILES[:4]:
        _write(tmp_path, {name: (stdlib / name).read_bytes()})
    monkeypatch.setattr(lm_data, "stdlib_root", lambda: tmp_path)
    corpus = build_corpus(STDLIB_FILES[:5], max_bytes=20_000)
    assert corpus.missing == [STDLIB_FILES[4]]
    assert corpus.files[0] == STDLIB_FILES[0] and not corpus.fallback
    assert f"missing on this install (1): {STDLIB_FILES[4]}" in corpus.describe()


def test_too_few_bytes_fall_back_to_minimoe_sources(tmp_path):
    corpus = build_corpus(["absent.py"], root=tmp_path, max_bytes=30_000)
    assert corpus.fallback and corpus.missing == ["absent.py"]
    assert corpus.n_bytes == 30_000 and Path(corpus.root).name == "minimoe"
    assert corpus.files[0] == "__init__.py" and all(f.endswith(".py") for f in corpus.files)
    assert "fallback" in corpus.describe()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        build_corpus(val_fraction=1.0)
    with pytest.raises(ValueError, match="max_bytes"):
        build_corpus(max_bytes=1)
    with pytest.raises(TypeError, match="list or tuple"):
        build_corpus("textwrap.py")


def test_get_batch_windows_and_next_bytes():
    data = torch.arange(100, dtype=torch.uint8)
    x, y = get_batch(data, 4, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.int64
    for row_x, row_y in zip(x, y):
        start = int(row_x[0])
        assert torch.equal(row_x, torch.arange(start, start + 8))
        assert torch.equal(row_y, torch.arange(start + 1, start + 9))
    x2, _ = get_batch(data, 4, 8, torch.Generator().manual_seed(0))
    x3, _ = get_batch(data, 4, 8, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    # the last possible window ends exactly at the last byte
    x, y = get_batch(torch.arange(9, dtype=torch.uint8), 3, 8, torch.Generator())
    assert torch.equal(y[0], torch.arange(1, 9))


def test_get_batch_refuses_short_or_wrong_data():
    with pytest.raises(ValueError, match="too few"):
        get_batch(torch.zeros(8, dtype=torch.uint8), 1, 8, torch.Generator())
    with pytest.raises(ValueError, match="uint8"):
        get_batch(torch.zeros(100, dtype=torch.int64), 1, 8, torch.Generator())


def test_unigram_loss_by_hand(tmp_path):
    _write(tmp_path, {"t.py": b"aab" + b"ab"})
    corpus = build_corpus(["t.py"], root=tmp_path, val_fraction=0.4, max_bytes=5)
    assert bytes(corpus.val_U8.tolist()) == b"ab"
    # add-one smoothing over 256 bytes: p(a) = 3/259, p(b) = 2/259
    expected = -(math.log(3 / 259) + math.log(2 / 259)) / 2
    assert unigram_loss(corpus) == pytest.approx(expected, rel=1e-12)


def test_unigram_baseline_of_the_stdlib_is_about_three_nats():
    assert 2.8 < unigram_loss(build_corpus()) < 3.4
