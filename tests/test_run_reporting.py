"""What a run reports: task_loss and learned_loss, the descent guard's run totals and warning, plain progress
lines, interrupted runs, --resume alone and a user's own model (toolkit.runs.reporting, toolkit.runs.run)."""
from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losses
from helpers import run_lfl
from toolkit.analysis.rundir import guard_shares, read_run, renamed_losses
from toolkit.data.datasets import load_dataset
from toolkit.meta.guard import GuardCounts, GuardReport
from toolkit.models.zoo import build_model
from toolkit.errors import ConfigError
from toolkit.runs.common import BatchStream, TrainConfig, seed_everything
from toolkit.runs.reporting import LossWindow, PlainProgress, sums_from_checkpoint
from toolkit.runs.run import train


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def small(**kw) -> TrainConfig:
    base = dict(dataset="digits", model="mlp", steps=30, batch_size=64, lr=0.1, seed=0, device="cpu",
                log_every=10, checkpoint_every=0, model_options={"hidden": (16,)})
    base.update(kw)
    return TrainConfig(**base)


def test_guard_counts_keep_the_run_totals_while_each_read_starts_a_window():
    counts = GuardCounts("cpu")
    one, zero = torch.tensor(True), torch.tensor(False)
    counts.add(GuardReport(rows_reflected=torch.tensor(3), rows=torch.tensor(4), step_reflected=one,
                           step_rejected=zero))   # 3 of 4 samples, step reflected
    counts.add(GuardReport(rows_reflected=torch.tensor(1), rows=torch.tensor(4), step_reflected=zero,
                           step_rejected=one))   # 1 of 4, step rejected
    assert counts.read() == {"guarded": 0.5, "guarded_steps": 0.5, "rejected_steps": 0.5}
    counts.add(GuardReport(rows_reflected=torch.tensor(0), rows=torch.tensor(8), step_reflected=zero,
                           step_rejected=zero))
    assert counts.read() == {"guarded": 0.0, "guarded_steps": 0.0, "rejected_steps": 0.0}
    assert counts.read() == {"guarded": 0.0, "guarded_steps": 0.0, "rejected_steps": 0.0}  # an empty window
    assert counts.totals() == {"guarded": 4 / 16, "guarded_steps": 1 / 3, "rejected_steps": 1 / 3}
    restored = GuardCounts("cpu")
    restored.load(torch.tensor([4, 16, 1, 3, 1]))  # a checkpoint written before the totals were kept
    assert restored.totals() == counts.totals() and restored.read() == counts.totals()


def test_guard_counts_fold_their_reports_exactly_whenever_read_and_every_fold_interval():
    """Reports are kept as stacked rows and summed every FOLD_EVERY steps and on every read: the counts equal a
    naive sum of the reports at any step, across folds, reads and a checkpoint's load."""
    generator = torch.Generator().manual_seed(0)
    counts, naive = GuardCounts("cpu"), torch.zeros(2, 5, dtype=torch.long)
    for step in range(GuardCounts.FOLD_EVERY * 2 + 7):
        rows = int(torch.randint(1, 9, (), generator=generator))
        report = GuardReport(rows_reflected=torch.randint(0, rows + 1, (), generator=generator),
                             rows=torch.tensor(rows),
                             step_reflected=torch.rand((), generator=generator) < 0.3,
                             step_rejected=torch.rand((), generator=generator) < 0.1)
        counts.add(report)
        naive += torch.tensor([int(report.rows_reflected), rows, int(report.step_reflected), 1,
                               int(report.step_rejected)])
        assert len(counts._pending) < GuardCounts.FOLD_EVERY
        if step in (3, GuardCounts.FOLD_EVERY, GuardCounts.FOLD_EVERY + 40):
            assert torch.equal(counts.counts, naive) and counts.counts.dtype == torch.long
        if step == GuardCounts.FOLD_EVERY + 50:
            window = naive[0].tolist()
            assert counts.read() == {"guarded": window[0] / window[1], "guarded_steps": window[2] / window[3],
                                     "rejected_steps": window[4] / window[3]}
            naive[0] = 0
    assert torch.equal(counts.counts, naive)
    restored = GuardCounts("cpu")
    restored.add(GuardReport(torch.tensor(1), torch.tensor(2), torch.tensor(True), torch.tensor(False)))
    restored.load(counts.counts.clone())  # a checkpoint's counts replace what was pending too
    assert torch.equal(restored.counts, naive)


def _first_record_and_reference(digits, tmp_path, kind: str, initial_loss=None):
    """Step 1's train record (log_every=1) and θ0's outputs on batch 0 with its labels, rebuilt here."""
    config = small(loss=kind, steps=2, log_every=1)
    train(config, out_dir=tmp_path, progress=False, dataset=digits, initial_loss=initial_loss)
    first = next(r for r in read_run(tmp_path).history if r["phase"] == "train")
    seed_everything(config.seed)
    model = build_model("mlp", input_shape=digits.input_shape, num_outputs=10, hidden=(16,))
    x, y = BatchStream(digits.train.x, digits.train.y, 64, seed=0)(0)
    with torch.no_grad():
        return first, model(x), y


def test_a_cross_entropy_runs_first_record_is_the_batch_task_loss_at_the_initial_parameters(tmp_path, digits):
    first, outputs, y = _first_record_and_reference(digits, tmp_path, "ce")
    assert first["step"] == 1 and "train_loss" not in first and "learned_loss" not in first
    assert first["task_loss"] == pytest.approx(F.cross_entropy(outputs, y).item(), rel=1e-6)


@pytest.mark.slow
def test_an_adalfl_runs_first_record_holds_the_task_loss_and_the_learned_loss(tmp_path, digits):
    torch.manual_seed(1)
    loss = losses.MLPLoss()
    reference = losses.MLPLoss()
    reference.load_state_dict(loss.state_dict())
    first, outputs, y = _first_record_and_reference(digits, tmp_path, "adalfl", initial_loss=loss)
    assert first["task_loss"] == pytest.approx(F.cross_entropy(outputs, y).item(), rel=1e-6)
    assert first["learned_loss"] == pytest.approx(reference(outputs, y).item(), rel=1e-5)


def test_results_carry_the_guards_run_totals_and_warn_once_above_half(tmp_path, digits, capsys):
    """A frozen loss whose gradient is minus cross-entropy's: every sample points uphill, so the guard reflects all."""
    uphill = losses.SymbolicLoss("1.0*y*log(y_pred)")  # a constant, so a learned (guarded) loss
    results = train(small(loss="ml3"), out_dir=tmp_path, progress=False, dataset=digits, initial_loss=uphill)
    records = [r for r in read_run(tmp_path).records("train")]
    assert [r["guarded"] for r in records] == [1.0, 1.0, 1.0] and results["guarded"] == 1.0
    assert results["rejected_steps"] == pytest.approx(sum(r["rejected_steps"] for r in records) / 3, rel=1e-12)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["guarded"] == results["guarded"] and len(saved["warnings"]) == 1
    err = capsys.readouterr().err
    assert err.count("Warning: the descent guard reflected") == 1
    assert guard_shares(read_run(tmp_path))["guarded"] == results["guarded"]
    exported = run_lfl("export", tmp_path)
    assert exported.returncode == 0 and f"reflected {results['guarded']:.1%} of the training samples" in exported.stderr


def test_older_runs_train_loss_is_read_as_what_it_was():
    old = [{"phase": "train", "step": 10, "train_loss": 0.5}, {"phase": "eval", "step": 10, "valid_error": 0.1}]
    assert renamed_losses(old, {"loss": "ce"})[0] == {"phase": "train", "step": 10, "task_loss": 0.5}
    assert renamed_losses(old, {"loss": "adalfl"})[0] == {"phase": "train", "step": 10, "learned_loss": 0.5}
    assert renamed_losses(old, {"loss": "mse", "task": "regression"})[0]["task_loss"] == 0.5
    assert renamed_losses(old, {"loss": "mse", "task": "classification"}) == old  # squared error on classes: neither
    assert sums_from_checkpoint({"loss_sum": torch.tensor(7.0, dtype=torch.float64)}, learned=True).tolist() == [0, 7]


def test_loss_window_averages_on_the_device_and_starts_afresh():
    window = LossWindow("cpu")
    for value in (1.0, 2.0, 6.0):
        window.add({"task_loss": torch.tensor(value), "meta_loss": torch.tensor(9.0)})
    assert window.read(3) == {"task_loss": 3.0}
    window.add({"task_loss": torch.tensor(4.0), "learned_loss": torch.tensor(40.0)})
    assert window.read(1) == {"task_loss": 4.0, "learned_loss": 40.0}


def test_plain_progress_prints_one_line_every_n_steps_and_at_the_end():
    stream = io.StringIO()
    progress = PlainProgress(25, initial=0, desc="train", every=10, stream=stream)
    for step in range(1, 26):
        if step == 10:
            progress.set_postfix(task_loss="0.5")
        progress.update(1)
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["train step 10/25", "train step 20/25", "train step 25/25"]
    assert "task_loss 0.5" in lines[0] and lines[0].endswith(" s")


def test_a_run_without_a_terminal_prints_plain_lines(tmp_path, digits, capsys):
    train(small(eval_every=10), out_dir=tmp_path, progress=True, dataset=digits)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train step")]
    assert len(lines) == 3 and "task_loss" in lines[0] and "valid_error" in lines[1]


def test_an_interrupted_run_says_so_and_releases_its_lock(tmp_path, digits):
    def interrupt(step):
        if step == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small(checkpoint_every=10), out_dir=tmp_path, progress=False, dataset=digits, on_step=interrupt)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted" and results["step"] == 15
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / ".lock").read_text() == ""
    assert train(small(checkpoint_every=10), out_dir=tmp_path, resume=True, progress=False,
                 dataset=digits)["status"] == "finished"


def test_resume_alone_reads_the_options_from_the_checkpoint(tmp_path):
    args = ["train", "--dataset", "digits", "--model", "mlp", "--steps", "20", "--batch-size", "32", "--lr", "0.05",
            "--checkpoint-every", "10", "--log-every", "10", "--device", "cpu", "--quiet", "--out", tmp_path]
    assert run_lfl(*args).returncode == 0
    first = json.loads((tmp_path / "results.json").read_text())["config"]
    resumed = run_lfl("train", "--out", tmp_path, "--resume", "--steps", "30", "--lr", "0.05", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    config = json.loads((tmp_path / "results.json").read_text())["config"]
    assert config == {**first, "steps": 30, "device": "auto"}  # the device is a machine's, not the run's
    refused = run_lfl("train", "--out", tmp_path, "--resume", "--lr", "0.5")
    assert refused.returncode == 2 and "lr" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def _net(hidden: int = 12) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def test_a_user_model_trains_and_only_the_same_model_resumes_it(tmp_path, digits):
    torch.manual_seed(0)
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    results = train(small(checkpoint_every=10), out_dir=tmp_path, progress=False, dataset=digits, model=net)
    assert results["user_model"] and results["model"] == "torch.nn.modules.container.Sequential"
    assert results["test_error"] < 0.5 and any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    with pytest.raises(ConfigError, match="trained a user model .*model="):
        train(small(checkpoint_every=10, steps=40), out_dir=tmp_path, resume=True, progress=False, dataset=digits)
    with pytest.raises(ConfigError, match="different model"):
        train(small(checkpoint_every=10, steps=40), out_dir=tmp_path, resume=True, progress=False, dataset=digits,
              model=_net(hidden=8))
    resumed = train(small(checkpoint_every=10, steps=40), out_dir=tmp_path, resume=True, progress=False,
                    dataset=digits, model=_net())
    assert resumed["steps"] == 40
    with pytest.raises(ConfigError, match=r"outputs of shape \(2, 3\)"):
        train(small(), progress=False, dataset=digits, model=nn.Linear(64, 3))


def test_a_guard_that_replaced_most_steps_is_reported_once_each():
    """A broken loss (NaN, infinite, uphill) whose every step the guard replaced ends with the task loss's
    numbers: results.json's warnings and stderr say so, once per kind, whatever the order of checks."""
    import io

    from toolkit.runs.reporting import GuardWarning

    stream = io.StringIO()
    warning = GuardWarning(stream=stream)
    warning.check_summary({"guarded": 0.1, "rejected_steps": 0.5}, 10)     # at the limit: nothing
    assert warning.messages == [] and stream.getvalue() == ""
    warning.check_summary({"guarded": 0.2, "rejected_steps": 1.0}, 20)
    warning.check_summary({"guarded": 0.9, "rejected_steps": 1.0}, 30)
    warning.check_summary({"guarded": 0.95, "rejected_steps": 1.0}, 40)
    assert len(warning.messages) == 2
    assert "replaced 100.0% of the steps by the task loss's step by step 20" in warning.messages[0]
    assert "reflected 90.0%" in warning.messages[1]
    assert stream.getvalue().count("Warning: ") == 2
