"""CIFAR/SVHN augmentation: a naive per-sample reference, determinism, and the training loop on files
written here in the real formats (the writers of test_data)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data import write_cifar10, write_svhn

from toolkit.runs import run
from toolkit.data.augment import (Augmentation, augment_batch, augmentation_draws, augmentation_for, augmentation_seed,
                             crop_and_flip)
from toolkit.data.datasets import load_dataset
from toolkit.runs.common import BatchStream, TrainConfig

REPOSITORY = Path(__file__).resolve().parents[1]


def naive_augment(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """One image at a time: pad with zeros, slice the crop at the drawn offsets, mirror if drawn."""
    _, channels, height, width = x.shape
    out = []
    for image, (top, left), flip in zip(x, offsets.tolist(), flips.tolist()):
        padded = torch.zeros(channels, height + 2 * padding, width + 2 * padding, dtype=x.dtype)
        padded[:, padding:padding + height, padding:padding + width] = image
        crop = padded[:, top:top + height, left:left + width]
        out.append(torch.flip(crop, dims=[-1]) if flip else crop)
    return torch.stack(out)


def position_images(n: int, height: int = 32, width: int = 32) -> torch.Tensor:
    """Images whose pixel (r, c) holds 1 + r·width + c in every channel (0 only in the padding)."""
    grid = 1 + torch.arange(height * width, dtype=torch.float64).reshape(height, width)
    return grid.expand(n, 3, height, width).clone()


def decode(out: torch.Tensor, padding: int, width: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets and flips read back from augmented :func:`position_images` alone.

    The centre pixel (16, 16) of a 32×32 crop always comes from the image (offsets shift by at
    most ``padding`` ≤ 15); its value gives the source row and column, and its right neighbour
    tells whether the row runs forwards (+1) or mirrored (-1).
    """
    centre = out[:, 0, 16, 16].long() - 1
    row, column = centre // width, centre % width
    flips = (out[:, 0, 16, 17] - out[:, 0, 16, 16]) < 0
    # Unflipped, crop column 16 is image column 16 + left - padding; mirrored, it is crop column 15.
    tops = row - 16 + padding
    lefts = torch.where(flips, column - 15, column - 16) + padding
    return torch.stack([tops, lefts], dim=1), flips


# ---------------------------------------------------------------------------------- the function itself

@pytest.mark.parametrize("shape, padding, flip", [
    ((64, 3, 32, 32), 4, True), ((64, 3, 32, 32), 4, False), ((9, 2, 5, 7), 2, True), ((5, 1, 6, 6), 0, True),
], ids=["cifar", "svhn", "non-square", "flip-only"])
def test_batched_augmentation_equals_a_per_sample_reference(shape, padding, flip):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    offsets, flips = augmentation_draws(len(x), seed=3, step=11, crop_padding=padding, flip=flip)
    out = augment_batch(x, seed=3, step=11, crop_padding=padding, flip=flip)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, naive_augment(x, offsets, flips, padding))
    assert torch.equal(crop_and_flip(x, offsets, flips, crop_padding=padding), out)


def test_same_seed_and_step_give_the_same_batch_and_others_differ():
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = augment_batch(x, seed=5, step=7, crop_padding=4, flip=True)
    assert torch.equal(a, augment_batch(x.clone(), seed=5, step=7, crop_padding=4, flip=True))
    assert not torch.equal(a, augment_batch(x, seed=5, step=8, crop_padding=4, flip=True))
    assert not torch.equal(a, augment_batch(x, seed=6, step=7, crop_padding=4, flip=True))


def test_offsets_cover_zero_to_eight_and_cifar_flips_half_read_from_the_images():
    offsets, flips = [], []
    augmentation = augmentation_for("cifar10")
    for step in range(8):
        decoded = decode(augmentation(position_images(256), seed=0, step=step), padding=4)
        offsets.append(decoded[0]), flips.append(decoded[1])
        assert torch.equal(decoded[0], augmentation_draws(256, seed=0, step=step, crop_padding=4, flip=True)[0])
    offsets, flips = torch.cat(offsets), torch.cat(flips)
    assert set(offsets[:, 0].tolist()) == set(range(9)) == set(offsets[:, 1].tolist())
    assert 0.45 < flips.double().mean() < 0.55  # 2048 fair coins: 4.5 standard deviations either way


def test_svhn_crops_but_never_flips():
    augmentation = augmentation_for("svhn")
    assert augmentation == Augmentation(crop_padding=4, flip=False)
    offsets = []
    for step in range(4):
        decoded_offsets, flips = decode(augmentation(position_images(256), seed=2, step=step), padding=4)
        assert not flips.any()
        offsets.append(decoded_offsets)
    assert set(torch.cat(offsets).flatten().tolist()) == set(range(9))


def test_standard_augmentations_by_dataset():
    cifar = Augmentation(crop_padding=4, flip=True)
    assert augmentation_for("cifar10") == augmentation_for("CIFAR-100") == augmentation_for(" cifar_10 ") == cifar
    for name in ("digits", "fashion-mnist", "mnist", "diabetes", "csv:data/x.csv"):
        assert augmentation_for(name) is None


def test_augmentation_seeds_are_a_stream_apart_from_the_batch_permutations():
    grid = [(seed, step) for seed in range(20) for step in range(50)]
    seeds = {augmentation_seed(seed, step) for seed, step in grid}
    assert len(seeds) == len(grid)
    assert seeds.isdisjoint({seed * 1_000_003 + epoch for seed, epoch in grid})  # BatchStream's seeds


def test_same_draws_in_a_fresh_process_and_torchvision_is_never_imported():
    code = ("import sys, torch; from toolkit.data.augment import augmentation_draws; import toolkit.runs.run; "
            "o, f = augmentation_draws(16, seed=9, step=123, crop_padding=4, flip=True); "
            "print(o.tolist(), f.tolist(), 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                            check=True, timeout=120)
    offsets, flips = augmentation_draws(16, seed=9, step=123, crop_padding=4, flip=True)
    assert result.stdout.strip() == f"{offsets.tolist()} {flips.tolist()} False"


def test_user_errors_are_clear():
    with pytest.raises(ValueError, match=r"images \(N, C, H, W\).*\(8, 5\)"):
        augment_batch(torch.zeros(8, 5), seed=0, step=0, crop_padding=4, flip=True)
    with pytest.raises(ValueError, match="crop_padding must be an integer >= 0"):
        Augmentation(crop_padding=-1)
    with pytest.raises(ValueError, match="seed and step must be >= 0"):
        augmentation_seed(0, -1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_batch_without_host_syncs():
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = augment_batch(x, seed=1, step=2, crop_padding=4, flip=True)
    x_cuda = x.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = augment_batch(x_cuda, seed=1, step=2, crop_padding=4, flip=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.device == x_cuda.device and torch.equal(out.cpu(), expected)


# ---------------------------------------------------------------------------------- the training loop

WRITERS = {"cifar10": (lambda root: write_cifar10(root / "cifar-10-batches-py"), Augmentation(4, True)),
           "svhn": (lambda root: write_svhn(root / "svhn", n_train=100), Augmentation(4, False))}


VALID_FRACTION = 0.2
"""Of the writers' 100 training images: 20 for validation, so its selection part holds 10 (the fewest a run takes)."""


def tiny(root: Path, dataset: str = "cifar10", **kw) -> TrainConfig:
    base = dict(dataset=dataset, data_dir=str(root), model="mlp", model_options={"hidden": (8,)}, steps=12,
                batch_size=16, lr=0.05, momentum=0.9, seed=0, device="cpu", log_every=4, checkpoint_every=0,
                valid_fraction=VALID_FRACTION)
    base.update(kw)
    return TrainConfig(**base)


def record_stepper_batches(monkeypatch) -> list:
    """Every (train, valid) pair the training loop hands to a stepper, in order."""
    seen = []
    from toolkit.meta.online import OnlineLossLearner

    for stepper in (run.FixedLossStepper, OnlineLossLearner):
        def step(self, train, valid=None, *, _original=stepper.step, **kw):
            seen.append((train, valid))
            return _original(self, train, valid, **kw)
        monkeypatch.setattr(stepper, "step", step)
    return seen


@pytest.mark.parametrize("dataset", ["cifar10", "svhn"])
@pytest.mark.parametrize("augment", [True, False], ids=["augment", "no-augment"])
def test_training_batches_are_augmented_only_with_the_flag(tmp_path, monkeypatch, dataset, augment):
    write, standard = WRITERS[dataset]
    write(tmp_path)
    seen = record_stepper_batches(monkeypatch)
    config = tiny(tmp_path, dataset, augment=augment)
    run.train(config, progress=False)
    data = load_dataset(dataset, data_dir=tmp_path, download=False, seed=0, valid_fraction=VALID_FRACTION)
    plain = BatchStream(data.train.x, data.train.y, 16, seed=0)
    assert len(seen) == config.steps
    for step, ((x, y), _) in enumerate(seen):
        raw_x, raw_y = plain(step)
        assert torch.equal(y, raw_y)
        assert torch.equal(x, standard(raw_x, seed=0, step=step) if augment else raw_x)
    if augment:
        assert not torch.equal(seen[0][0][0], plain(0)[0])


@pytest.mark.parametrize("meta_source", ["valid", "train"])
def test_meta_objective_batches_are_never_augmented(tmp_path, monkeypatch, meta_source):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    seen = record_stepper_batches(monkeypatch)
    run.train(tiny(tmp_path, loss="adalfl", init_steps=2, steps=4, meta_source=meta_source), progress=False)
    data = load_dataset("cifar10", data_dir=tmp_path, download=False, seed=0, valid_fraction=VALID_FRACTION)
    source = (data.valid if meta_source == "valid" else data.train).x.flatten(1)
    for _, (x_meta, _) in seen:
        matches = (x_meta.flatten(1)[:, None, :] == source[None]).all(-1)  # (batch, source rows)
        assert matches.any(1).all()  # every meta row is a row of the raw split


def test_tiny_cifar_run_trains_with_augmentation_and_records_it(tmp_path):
    write_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    augmented = run.train(tiny(tmp_path / "data"), out_dir=tmp_path / "on", progress=False)
    plain = run.train(tiny(tmp_path / "data", augment=False), out_dir=tmp_path / "off", progress=False)
    on_disk = json.loads((tmp_path / "on" / "results.json").read_text())
    assert on_disk["status"] == "finished" and on_disk["config"]["augment"] is True
    assert json.loads((tmp_path / "off" / "results.json").read_text())["config"]["augment"] is False
    assert torch.isfinite(torch.tensor(augmented["test_loss"]))
    assert augmented["test_loss"] != plain["test_loss"]  # the flag changes what the model sees


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("loss", ["ce", "adalfl"])
def test_resumed_augmented_run_equals_uninterrupted_run(tmp_path, loss):
    write_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    # A Taylor-polynomial loss: the MLP loss's formula takes seconds of SymPy printing per loss.json.
    config = tiny(tmp_path / "data", loss=loss, loss_param="taylor", init_steps=3, steps=14, checkpoint_every=5,
                  model_options={"hidden": (8,), "dropout": 0.2})
    straight = run.train(config, out_dir=tmp_path / "straight", progress=False)

    def interrupt(step):
        if step == 8:
            raise Interrupted

    with pytest.raises(Interrupted):
        run.train(config, out_dir=tmp_path / "resumed", progress=False, on_step=interrupt)
    resumed = run.train(config, out_dir=tmp_path / "resumed", resume=True, progress=False)
    for key in ("test_loss", "test_error", "valid_loss"):
        assert resumed[key] == straight[key]
    history = lambda d: [{k: v for k, v in json.loads(line).items() if k != "wall_time_s"}  # noqa: E731
                         for line in (d / "history.jsonl").read_text().splitlines()]
    assert history(tmp_path / "resumed") == history(tmp_path / "straight")
    learned = lambda d: json.loads((d / "loss.json").read_text())["parameters"]  # noqa: E731
    assert learned(tmp_path / "resumed") == learned(tmp_path / "straight")
    final = lambda d: torch.load(d / "checkpoint.pt", weights_only=True)["model"]  # noqa: E731
    for name, tensor in final(tmp_path / "straight").items():
        assert torch.equal(tensor, final(tmp_path / "resumed")[name])


def test_checkpoints_from_before_the_flag_resume_as_runs_without_augmentation(tmp_path):
    """A saved config without ``augment`` trained without it: CIFAR resumes with --no-augment only;
    a dataset that has no augmentation resumes with the default."""
    write_cifar10(tmp_path / "data" / "cifar-10-batches-py")

    def interrupt(step: int) -> None:
        if step == 6:
            raise Interrupted

    def interrupted_old_run(config: TrainConfig, out: Path) -> None:
        with pytest.raises(Interrupted):
            run.train(config, out_dir=out, progress=False, on_step=interrupt)
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        del state["config"]["augment"]
        state["version"] = 1  # written before the flag: a version-1 checkpoint, migrated on reading
        torch.save(state, out / "checkpoint.pt")

    cifar = tiny(tmp_path / "data", checkpoint_every=5, augment=False)
    interrupted_old_run(cifar, tmp_path / "cifar")
    with pytest.raises(run.ConfigError, match="different options than the checkpoint .*: augment;"):
        run.train(tiny(tmp_path / "data", checkpoint_every=5), out_dir=tmp_path / "cifar", resume=True,
                  progress=False)
    assert run.train(cifar, out_dir=tmp_path / "cifar", resume=True, progress=False)["status"] == "finished"

    digits = TrainConfig(dataset="digits", model="mlp", model_options={"hidden": (8,)}, steps=12, batch_size=16,
                         device="cpu", checkpoint_every=5)
    interrupted_old_run(digits, tmp_path / "digits")
    assert run.train(digits, out_dir=tmp_path / "digits", resume=True, progress=False)["status"] == "finished"


def test_command_line_no_augment(tmp_path):
    write_cifar10(tmp_path / "data" / "cifar-10-batches-py")
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "cli.py"), "train", "--dataset", "cifar10", "--data-dir",
         str(tmp_path / "data"), "--model", "mlp", "--model-option", "hidden=[8]", "--steps", "3", "--batch-size",
         "16", "--device", "cpu", "--quiet", "--no-augment", "--valid-fraction", str(VALID_FRACTION),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=REPOSITORY, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["augment"] is False
