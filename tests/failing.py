"""Failure injection for training tests: a train loop that fails once after a given epoch.

Ray Train runs the train loop in its worker processes, so the wrapper is a picklable class
that those processes import from here (``tests.failing``; Ray puts the driver's working
directory, the repository root, on their path). Production code knows nothing of it: a test
swaps a pipeline's ``run_training`` for :func:`run_training_failing_once`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from unittest import mock

from rayproc.runtime.training import InProcessSession, RayTrainSession, run_training


@dataclass(frozen=True)
class FailOnceAfterEpoch:
    """A train loop that runs ``train_loop`` and fails once, after checkpointing ``epoch``.

    Only an attempt that started from scratch fails (its metrics rows say ``start_epoch``
    0), so the restart from that epoch's checkpoint, or a rerun, trains on. The failure comes
    ``pause`` seconds after the epoch is reported, as if during the next epoch: Ray Train's
    controller polls the workers every 2 s and must register the checkpoint first, or the
    restart may not see it.
    """

    train_loop: Callable[[dict], None]
    epoch: int
    pause: float = 5.0

    def __call__(self, config: dict) -> None:
        with contextlib.ExitStack() as patches:
            for session in (InProcessSession, RayTrainSession):
                patches.enter_context(mock.patch.object(session, "report", self._failing(session.report)))
            self.train_loop(config)

    def _failing(self, report):
        def failing_report(session, metrics: dict, folder: str | None) -> None:
            report(session, metrics, folder)
            if metrics["epoch"] == self.epoch and metrics["start_epoch"] == 0:
                time.sleep(self.pause)
                raise RuntimeError(f"injected failure after epoch {self.epoch}")

        return failing_report


def run_training_failing_once(after_epoch: int, *, pause: float = 5.0):
    """:func:`rayproc.runtime.training.run_training` whose train loop fails once after ``after_epoch``.

    Use as ``monkeypatch.setattr(pipeline_module, "run_training", run_training_failing_once(0))``.
    """

    def run(spec, train_loop: Callable[[dict], None], **options):
        return run_training(spec, FailOnceAfterEpoch(train_loop, after_epoch, pause), **options)

    return run


__all__ = ["FailOnceAfterEpoch", "run_training_failing_once"]
