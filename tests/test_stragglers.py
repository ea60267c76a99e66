"""Stragglers: detection on synthetic figures, then a real 2-rank CPU job with one rank slowed from outside."""
import json
import logging
import os
import re
import signal
import threading
import time

import numpy as np
import pytest

import fcn8s.stragglers as stragglers
from fcn8s.config import load_config
from fcn8s.distributed import DistContext
from fcn8s.errors import ConfigError
from fcn8s.stragglers import Spread, StragglerDetector, StragglerMonitor, gather_hosts, gather_seconds
from tests.test_distributed import _job_pids, _train_args
from tests.test_watchdog import _finish, _start, _wait_for_step


def _named(detector, intervals):
    return [[slow.rank for slow in detector.update(seconds)] for seconds in intervals]


def test_a_rank_slow_for_n_intervals_in_a_row_is_named_every_interval_until_it_recovers():
    detector = StragglerDetector(factor=1.5, intervals=3)
    figures = [[1.0, 2.0]] * 4 + [[1.0, 1.2], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
    assert _named(detector, figures) == [[], [], [1], [1], [], [], [], [1]]


def test_the_others_median_is_the_reference_so_two_ranks_work_and_crowds_do_not_hide_anyone():
    # With two ranks the median of both is their mean: 2.5 s vs 1 s is only 1.43x it, but 2.5x the other rank.
    assert _named(StragglerDetector(1.5, 1), [[1.0, 2.5]]) == [[1]]
    assert _named(StragglerDetector(1.5, 1), [[2.5, 1.0]]) == [[0]]
    eight = [1.0, 1.1, 0.9, 1.0, 3.0, 1.05, 1.0, 2.0]  # ranks 4 and 7 are > 1.5x the others' median (1.0-1.05)
    assert _named(StragglerDetector(1.5, 1), [eight]) == [[4, 7]]
    assert stragglers.others_median(eight, 4) == pytest.approx(1.0)


@pytest.mark.parametrize("figures", [
    [[5.0, 5.0]] * 5,  # wall step times: equal on every rank of a synchronous job, whoever is slow
    [[1.0, 1.45], [1.45, 1.0], [1.0, 1.49]] * 2,  # noise below the factor
    [[1.0, 2.0], [1.0, 2.0], [1.0, 1.0]] * 2,  # slow twice, then normal: never 3 in a row
    [[3.0]] * 5,  # one rank: nothing to compare
])
def test_nobody_is_named_without_a_persistent_gap(figures):
    assert _named(StragglerDetector(1.5, 3), figures) == [[]] * len(figures)


def test_spread_line_names_the_fastest_and_slowest_rank():
    spread = Spread.of([0.8, 2.4, 1.0, 0.9])
    assert spread.describe() == "min 0.800 s (rank 0) median 0.950 s max 2.400 s (rank 1)"


def test_gathers_alone_are_the_local_values():
    assert gather_seconds(1.2345678, DistContext()).tolist() == [1.234568]  # whole microseconds
    assert gather_hosts(DistContext(), "node-7") == ["node-7"]


def test_monitor_logs_on_rank_0_and_on_the_straggler_itself(monkeypatch, caplog):
    """Two ranks simulated by the gather: rank 1 contributes 2.4 s per step, 'srv1' as its host."""
    def fake_sum(values, ctx):
        other = np.zeros_like(values)
        if values.ndim == 2:
            other[1, :4] = np.frombuffer(b"srv1", np.uint8)
        else:
            other[1] = 2_400_000
        mine = values.copy()
        if values.ndim == 2:
            mine[0] = np.zeros(values.shape[1])
            mine[0, :4] = np.frombuffer(b"srv0", np.uint8)
        return mine + other

    monkeypatch.setattr(stragglers, "sum_across_ranks", fake_sum)
    log = logging.getLogger("test.stragglers")
    monitor = StragglerMonitor(DistContext(rank=0, size=2), 1.5, 2, log)
    with caplog.at_level(logging.INFO, logger="test.stragglers"):
        first, second = monitor.interval(1.0), monitor.interval(1.0)
    assert first == {"rank_step_seconds": [1.0, 2.4], "stragglers": []}
    assert second == {"rank_step_seconds": [1.0, 2.4], "stragglers": [1]}
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == ("step time across ranks (own work: data + forward/backward, no waiting): "
                        "min 1.000 s (rank 0) median 1.700 s max 2.400 s (rank 1)")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == ["straggler: rank 1 on srv1 is slower than the others for 2 log interval(s) in a row: own "
                        "work 2.400 s per step = 2.4x the other ranks' median 1.000 s (limit 1.5x); every rank "
                        "waits for it in the gradient all-reduce"]


@pytest.mark.parametrize("key, value, message", [
    ("straggler_factor", 1.0, "train.straggler_factor: must be > 1.0"),
    ("straggler_intervals", -1, "train.straggler_intervals: must be >= 0"),
])
def test_straggler_settings_are_validated(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [f"train.{key}={value}"])


# ---------------------------------------------------------------------------------------------
# Real processes

# Rank 1 stopped 80% of the time, in bursts much shorter than a step: its own work ~5x longer (measured in CI
# at 60%: only 1.4-2x, as rank 0 then has both cores to itself while rank 1 is stopped).
STOP_SECONDS, EVERY_SECONDS = 0.08, 0.1


def _rank_pid(marker, rank):
    node = f"MS_NODE_ID={rank}\0".encode()
    return [pid for pid in _job_pids(marker) if node in open(f"/proc/{pid}/environ", "rb").read()
            and b"fcn8s.train" in open(f"/proc/{pid}/cmdline", "rb").read()][0]


def _stop_bursts(pid, done):
    """SIGSTOP ``pid`` for STOP_SECONDS every EVERY_SECONDS until ``done`` is set (always ends continued)."""
    while not done.is_set():
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(STOP_SECONDS)
        except ProcessLookupError:
            return
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                return
        done.wait(EVERY_SECONDS - STOP_SECONDS)


@pytest.mark.slow
@pytest.mark.alone  # the ranks' own-work times are compared: no other test's load on the cores
@pytest.mark.parametrize("slowed", [True, False], ids=["rank1_slowed", "nobody_slowed"])
def test_the_slowed_rank_and_only_it_is_named(mindrecord_dir, tmp_path, slowed):
    # log_interval 2: step 1 compiles the fused step, step 2 the halves; steps 3, 5, ... are timed and the
    # intervals ending at steps 4, 6, ... have figures, all slowed (the bursts start after step 2).
    steps = 12 if slowed else 8
    out = tmp_path / "out"
    launcher, logs, marker = _start(tmp_path, _train_args(mindrecord_dir, out, steps), "train.log_interval=2",
                                    "train.straggler_intervals=3")
    done = threading.Event()
    burster = None
    started = time.monotonic()
    try:
        if slowed:
            _wait_for_step(logs, 1, 2, launcher)
            burster = threading.Thread(target=_stop_bursts, args=(_rank_pid(marker, 1), done), daemon=True)
            burster.start()
        output, leftovers = _finish(launcher, marker, 900)
    finally:
        done.set()
        if burster is not None:
            burster.join()
    rank0 = (logs / "rank_0.log").read_text(errors="replace")
    assert launcher.returncode == 0 and leftovers == [], output[-3000:]
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    figures = {r["step"]: r["rank_step_seconds"] for r in records if "rank_step_seconds" in r}
    walls = {r["step"]: r["step_seconds"] for r in records}
    print(f"\n{'slowed' if slowed else 'unslowed'} in {time.monotonic() - started:.0f} s; own-work s/step by rank "
          f"and wall s/step: " + ", ".join(f"step {s}: {f} wall {walls[s]:.2f}" for s, f in figures.items()))
    assert sorted(figures) == list(range(4, steps + 1, 2)) and all(len(f) == 2 for f in figures.values())
    assert rank0.count("step time across ranks (own work") == len(figures)
    named = re.findall(r"WARNING fcn8s.trainer: straggler: rank (\d+) on ", rank0)
    if slowed:
        assert named and set(named) == {"1"}, rank0[-3000:]
        assert any(r.get("stragglers") == [1] for r in records)
        rank1 = (logs / "rank_1.log").read_text(errors="replace")
        assert re.search(r"WARNING fcn8s.trainer: straggler: rank 1 on \S+ \(this rank\)", rank1)
    else:
        assert named == [], rank0[-3000:]
        assert all(r.get("stragglers", []) == [] for r in records)
