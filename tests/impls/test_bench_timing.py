"""minimoe.bench.timing.compare: interleaved repeats, the best repeat, a warning when they spread."""

import time

import pytest

from minimoe.bench.timing import Comparison, compare


def _sleeper(ms: float):
    def fn():
        time.sleep(ms / 1e3)

    return fn


def _busy(ms: float):
    def fn():
        t0 = time.process_time()
        while time.process_time() - t0 < ms / 1e3:
            pass

    return fn


def test_compare_ranks_by_the_best_repeat():
    c = compare(
        {"fast": _sleeper(2), "slow": _sleeper(8)}, repeats=3, min_sample_ms=0, cpu_time=False
    )
    assert len(c.samples_ms["fast"]) == len(c.samples_ms["slow"]) == 3
    assert c.best_ms("fast") >= 2.0 and c.best_ms("slow") >= 8.0  # a sleep never returns early
    assert c.best_ms("fast") <= c.median_ms("fast")
    assert c.speedup("fast", over="slow") > 1.5


def test_a_burst_of_load_moves_the_median_not_the_best():
    """Three of five repeats slowed 10x (as another process would): the minimum stays put."""
    c = Comparison({"a": [10.0, 100.0, 10.5, 100.0, 100.0], "b": [20.0, 20.5, 20.1, 20.2, 20.3]})
    assert c.best_ms("a") == 10.0 and c.median_ms("a") == 100.0
    assert c.speedup("a", over="b") == pytest.approx(2.0)
    assert c.noisy() == ["a"]
    message = c.warning()
    assert message is not None and "a" in message and "busy" in message
    assert Comparison({"b": [20.0, 20.5, 20.1]}).warning() is None


def test_an_uneven_function_is_flagged_in_a_real_run():
    calls = {"n": 0}

    def uneven():
        calls["n"] += 1
        time.sleep(0.002 if calls["n"] % 2 else 0.02)

    c = compare(
        {"even": _sleeper(2), "uneven": uneven},
        repeats=6,
        warmup=1,
        min_sample_ms=0,
        cpu_time=False,
    )
    assert "uneven" in c.noisy()
    assert c.warning() is not None


@pytest.mark.parametrize(
    "fns, kwargs, error",
    [
        ({}, {}, ValueError),
        ({"a": _sleeper(0)}, {"repeats": 1}, ValueError),
        ({"a": _sleeper(0)}, {"spread_warning": 0}, ValueError),
        ({"a": 3}, {}, TypeError),
        ({"a": _sleeper(0)}, {"threads": 0}, ValueError),
    ],
)
def test_compare_rejects_bad_input(fns, kwargs, error):
    with pytest.raises(error):
        compare(fns, **kwargs)


def test_compare_times_on_one_thread_and_puts_the_setting_back():
    import torch

    seen = []
    before = torch.get_num_threads()
    compare({"a": lambda: seen.append(torch.get_num_threads())}, repeats=2, min_sample_ms=0)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
    seen.clear()
    compare({"a": lambda: seen.append(torch.get_num_threads())}, repeats=2, threads=None)
    assert set(seen) == {before}


def test_cpu_time_counts_work_not_waiting():
    """Sleeping (as when other processes hold the cores) costs wall time but no CPU time."""
    fns = {"sleeps": _sleeper(20), "works": _busy(20)}
    cpu = compare(fns, repeats=2, min_sample_ms=0)
    assert cpu.best_ms("sleeps") < 5.0 and cpu.best_ms("works") >= 19.0
    wall = compare(fns, repeats=2, min_sample_ms=0, cpu_time=False)
    assert wall.best_ms("sleeps") >= 20.0 and wall.best_ms("works") >= 19.0
