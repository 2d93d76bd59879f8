"""What a run tells its user while it goes: window averages of its losses, progress lines, warnings.

* :class:`LossWindow` sums the per-step losses on the device (no host read per step) and turns
  them into the history's window averages every ``--log-every`` steps: ``task_loss`` (the
  training batch's cross-entropy or squared error at the current parameters, for every method)
  and ``learned_loss`` (the learned loss's own value, for learned losses only).
* :func:`run_progress`: a tqdm bar on a terminal; elsewhere (output redirected to a file, a
  cluster's log) one plain line every ``every`` steps, so a log shows a run as it goes.
* :class:`GuardWarning`: one warning when the descent guard reflects more than half of the
  training samples (the learned loss then mostly points uphill, and the guard is training the model).
"""
from __future__ import annotations

import sys
import time

import torch
from torch import Tensor

LOSS_NAMES = ("task_loss", "learned_loss")
"""The per-step losses a run averages over each logging window, in this order."""

GUARD_WARNING_SHARE = 0.5
"""A run warns when the descent guard has reflected more than this share of the training samples."""

REJECTED_WARNING_SHARE = 0.5
"""A run warns when the descent guard has replaced more than this share of its steps by the task loss's step:
its numbers are then mostly the task loss's, not the learned loss's."""


class LossWindow:
    """Device-side sums of the step losses of the current logging window (float64).

    Args:
        device: where the sums live (the model's device).
        sums: sums carried over from a checkpoint, in :data:`LOSS_NAMES` order.
    """

    def __init__(self, device: torch.device | str, sums: Tensor | None = None) -> None:
        self.sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64, device=device)
        if sums is not None:
            self.sums = sums.to(device=device, dtype=torch.float64).reshape(len(LOSS_NAMES))
        self.seen: set[str] = set()

    def add(self, info: dict[str, Tensor]) -> None:
        """Add one step's losses (the names of :data:`LOSS_NAMES` that ``info`` holds)."""
        zero = self.sums.new_zeros(())
        self.seen.update(name for name in LOSS_NAMES if name in info)
        self.sums = self.sums + torch.stack([info[n].detach().double() if n in info else zero for n in LOSS_NAMES])

    def read(self, window: int) -> dict[str, float]:
        """The window's averages (one host read), then a fresh window."""
        values = (self.sums / max(window, 1)).tolist()
        self.sums = torch.zeros_like(self.sums)
        return {name: value for name, value in zip(LOSS_NAMES, values) if name in self.seen}


def sums_from_checkpoint(state: dict, *, learned: bool) -> Tensor | None:
    """The window sums a checkpoint holds: ``loss_sums`` or, written before it, ``loss_sum``, the one
    ``train_loss`` sum, which was the task loss for a fixed cross-entropy or squared-error run and the
    learned loss's value otherwise."""
    if state.get("loss_sums") is not None:
        return state["loss_sums"]
    old = state.get("loss_sum")
    if old is None:
        return None
    sums = torch.zeros(len(LOSS_NAMES), dtype=torch.float64)
    sums[LOSS_NAMES.index("learned_loss" if learned else "task_loss")] = old.double().reshape(())
    return sums


class PlainProgress:
    """A progress report for logs that are no terminal: one plain line every ``every`` steps.

    Offers the part of tqdm's interface the run uses (``n``, ``update``, ``set_postfix``, ``close``).
    A line reads ``train step 500/2000  task_loss 0.4123  valid_error 0.1234  elapsed 12.3 s``.
    """

    def __init__(self, total: int, *, initial: int, desc: str, every: int, stream=None) -> None:
        self.total, self.n, self.desc, self.every = total, initial, desc, max(int(every), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict[str, str] = {}
        self.started = time.perf_counter()

    def set_postfix(self, refresh: bool = True, **values: str) -> None:
        self.postfix.update(values)

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every or (self.n == self.total and before < self.total):
            fields = "".join(f"  {k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc} step {self.n}/{self.total}{fields}  elapsed {time.perf_counter() - self.started:.1f} s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        pass


def run_progress(total: int, *, initial: int, enabled: bool, desc: str, every: int):
    """A tqdm bar when stderr is a terminal, :class:`PlainProgress` lines when it is not (both only if enabled)."""
    from toolkit.runs.common import progress_bar

    on_terminal = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if enabled and not on_terminal:
        return PlainProgress(total, initial=initial, desc=desc, every=every)
    return progress_bar(total, initial=initial, enabled=enabled, desc=desc, unit="step")


def loss_postfix(record: dict) -> dict[str, str]:
    """The numbers of a history record a progress report shows: the losses and the validation error."""
    return {k: f"{record[k]:.4g}" for k in (*LOSS_NAMES, "valid_error", "valid_mse")
            if isinstance(record.get(k), float)}


class GuardWarning:
    """Warns once each (stderr) when the descent guard has done most of the work so far: reflected more than
    half of the samples' gradients, or replaced more than half of the steps by the task loss's step (a
    broken loss, one that is NaN, infinite, constant or zero, ends there: every step is cross-entropy's).

    ``messages`` holds what was warned, for results.json's ``warnings`` list.
    """

    def __init__(self, *, stream=None) -> None:
        self.stream = stream
        self.messages: list[str] = []
        self._warned: set[str] = set()

    def check(self, share: float | None, step: int, *, rejected: float | None = None) -> None:
        """Warn if ``share`` (the run's share of reflected samples up to ``step``) or ``rejected`` (its share
        of steps replaced by the task loss's) is above one half; each warning once."""
        if share is not None and share > GUARD_WARNING_SHARE and "reflected" not in self._warned:
            self._warn("reflected", guard_message(share, step))
        if rejected is not None and rejected > REJECTED_WARNING_SHARE and "rejected" not in self._warned:
            self._warn("rejected", rejected_message(rejected, step))

    def check_summary(self, summary: dict, step: int) -> None:
        """:meth:`check` on a guard summary (``guarded``, ``rejected_steps``), as results.json holds it."""
        self.check(summary.get("guarded"), step, rejected=summary.get("rejected_steps"))

    def _warn(self, kind: str, message: str) -> None:
        self._warned.add(kind)
        self.messages.append(message)
        print(f"Warning: {message}", file=self.stream if self.stream is not None else sys.stderr, flush=True)


def rejected_message(share: float, step: int) -> str:
    """The warning's text when the guard replaced most steps: the run's numbers are the task loss's."""
    return (f"the descent guard replaced {share:.1%} of the steps by the task loss's step by step {step}: the "
            "learned loss's steps raised the training loss (or were not finite), so these results are mostly "
            "the task loss's, not the learned loss's; check the loss (lfl export) or lower --lr")


def guard_message(share: float, step: int) -> str:
    """The warning's text: what the share means and what to try."""
    return (f"the descent guard reflected {share:.1%} of the training samples' learned-loss gradients by step "
            f"{step}: the learned loss mostly points uphill for the task loss, so the guard, not the learned loss, "
            "steers training; try a longer offline phase (--init-steps) or a lower --online-meta-lr")


__all__ = ["LossWindow", "PlainProgress", "run_progress", "loss_postfix", "GuardWarning", "guard_message",
           "rejected_message", "REJECTED_WARNING_SHARE",
           "sums_from_checkpoint", "LOSS_NAMES", "GUARD_WARNING_SHARE"]
