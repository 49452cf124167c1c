"""bench/qat_paired.py's statistics, against values computed by hand here.

McNemar's exact test is a two-sided binomial test of b successes in b + c trials at p = 1/2; the paired
interval is the normal approximation of the difference of two correlated proportions.
"""

from __future__ import annotations

import sys
from math import comb
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from qat_paired import mcnemar_exact, paired_interval  # noqa: E402


def test_mcnemar_exact_is_the_two_sided_binomial_tail():
    assert mcnemar_exact(3, 10) == pytest.approx(2 * sum(comb(13, k) for k in range(4)) / 2**13)  # 378 / 4096
    assert mcnemar_exact(10, 3) == mcnemar_exact(3, 10)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)


def test_an_even_split_is_no_evidence():
    assert mcnemar_exact(60, 60) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_large_counts_do_not_underflow():
    assert 0.0 < mcnemar_exact(700, 600) < 0.01  # 0.5 ** 1300 underflows a float; the log-space sum does not
    assert mcnemar_exact(700, 700) == 1.0


def test_paired_interval_by_hand():
    # b = 120, c = 80 of n = 10,000: d = -0.004; var = ((b + c) / n - d^2) / n = (0.02 - 0.000016) / 10,000
    low, high = paired_interval(120, 80, 10_000)
    half = 1.96 * (0.019984 / 10_000) ** 0.5 * 100
    assert (low, high) == pytest.approx((-0.4 - half, -0.4 + half))
    assert paired_interval(50, 50, 10_000)[0] == pytest.approx(-paired_interval(50, 50, 10_000)[1])
