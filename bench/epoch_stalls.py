"""Time a finished run lost between its epochs: TensorBoard's epoch summaries against history.csv.

Each epoch's summary is written when the epoch ends; the time from one summary to the next,
minus the later epoch's `epoch_seconds`, is time spent outside any epoch.

Usage:
    python bench/epoch_stalls.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def summary_times(run: Path) -> list[float]:
    """Wall times of the run's `epoch_accuracy` training summaries, in order."""
    import tensorflow as tf

    times = []
    for path in sorted((run / "logs" / "train").glob("events*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            times += [event.wall_time for value in event.summary.value if value.tag == "epoch_accuracy"]
    return times


def stalls(run: Path) -> list[float]:
    """Seconds between consecutive epochs that no epoch's `epoch_seconds` accounts for."""
    with open(run / "history.csv", newline="") as handle:
        seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(handle)]
    times = summary_times(run)
    return [times[i] - times[i - 1] - seconds[i] for i in range(1, min(len(times), len(seconds)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        gaps = stalls(run)
        print(f"{run}: {', '.join(f'{g:.1f}' for g in gaps)} s; {sum(g > 5 for g in gaps)} of {len(gaps)} over 5 s,"
              f" {sum(gaps):.0f} s in all")  # fmt: skip


if __name__ == "__main__":
    main()
