"""ThreadTuner: probes the other thread count every period and keeps the faster one."""

from __future__ import annotations

from radixlm.engine.thread_tuner import ThreadTuner


def drive(tuner: ThreadTuner, seconds_at: dict[int, float], steps: int) -> list[int]:
    """Run ``steps`` decode steps whose duration depends on the thread count; the counts used."""
    used = []
    for _ in range(steps):
        n = tuner.threads
        used.append(n)
        tuner.record(seconds_at[n])
    return used


def test_idle_machine_keeps_all_threads_and_probes_rarely():
    tuner = ThreadTuner(2, period=50, window=4, interval=100.0)
    used = drive(tuner, {2: 0.008, 1: 0.012}, 540)
    assert tuner.current == 2
    # one probe window of 4 steps per period of 50 (plus the window before the first probe)
    assert used.count(1) == 4 * 10 and used.count(2) == 500


def test_contention_switches_down_then_back_up():
    tuner = ThreadTuner(2, period=50, window=4, interval=100.0)
    drive(tuner, {2: 0.008, 1: 0.012}, 60)
    assert tuner.current == 2
    drive(tuner, {2: 0.030, 1: 0.012}, 60)  # a hog takes a core: 2 threads stall
    assert tuner.current == 1
    drive(tuner, {2: 0.008, 1: 0.012}, 60)  # the hog leaves: the probe of 2 wins again
    assert tuner.current == 2


def test_small_differences_do_not_flip_flop():
    tuner = ThreadTuner(4, period=20, window=4, margin=0.15, interval=100.0)
    drive(tuner, {4: 0.010, 3: 0.0095}, 400)  # 5 % faster is within the margin
    assert tuner.current == 4
    assert ThreadTuner(4).candidate == 3


def test_slow_steps_bring_the_probe_forward():
    """Contended steps of 200 ms: the probe comes after ``interval`` seconds, not 400 steps."""
    tuner = ThreadTuner(2, period=400, window=8, interval=3.0)
    used = drive(tuner, {2: 0.2, 1: 0.03}, 40)
    assert tuner.current == 1 and used.index(1) == 15  # 15 steps x 0.2 s >= 3 s
