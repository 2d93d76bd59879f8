"""The selection split (toolkit.data.selection): disjoint from everything any method trains or meta-trains on."""
from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch

from toolkit.data.datasets import DataError, Split, load_dataset
from toolkit.data.run_data import load_run_data, load_search_data, prepare_run_data
from toolkit.data.selection import selection_indices
from toolkit.runs.config import TrainConfig
from toolkit.runs.run import train

ROWS, CLASSES = 600, 3


@pytest.fixture()
def id_csv(tmp_path):
    """A CSV whose first feature is the row's id, so the rows of every split can be read back."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, size=ROWS)
    lines = ["id,noise,label"] + [f"{i},{rng.normal():.6f},{labels[i]}" for i in range(ROWS)]
    path = tmp_path / "ids.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, labels


def _ids(data) -> dict[str, np.ndarray]:
    """Row ids of each split, read back from the standardised id column (an increasing affine map of the id)."""
    splits = {"train": data.train, "meta": data.meta, "selection": data.valid, "test": data.test}
    column = torch.cat([split.x[:, 0] for split in splits.values()]).double()
    ranks = torch.argsort(torch.argsort(column)).numpy()  # every row is in exactly one split iff ranks are the ids
    ids, start = {}, 0
    for name, split in splits.items():
        ids[name] = ranks[start:start + len(split.y)]
        start += len(split.y)
    return ids


def test_train_meta_selection_and_test_are_pairwise_disjoint_and_cover_the_data(id_csv):
    path, labels = id_csv
    data = load_run_data(TrainConfig(dataset=f"csv:{path}", seed=3, valid_fraction=0.3, selection_fraction=0.4))
    ids = _ids(data)
    for (a, ia), (b, ib) in itertools.combinations(ids.items(), 2):
        assert not set(ia) & set(ib), (a, b)
    assert sorted(np.concatenate(list(ids.values()))) == list(range(ROWS))
    # labels travel with their rows (ids map to the CSV's labels), and the selection part is stratified
    np.testing.assert_array_equal(data.valid.y.numpy(), labels[ids["selection"]])
    valid_counts = np.bincount(labels[np.concatenate([ids["meta"], ids["selection"]])], minlength=CLASSES)
    selection_counts = np.bincount(labels[ids["selection"]], minlength=CLASSES)
    assert np.all(np.abs(selection_counts - 0.4 * valid_counts) < 1)
    assert len(ids["selection"]) == round(0.4 * (len(ids["meta"]) + len(ids["selection"])))
    assert data.regime["selection_samples"] == len(ids["selection"]) and data.regime["meta_samples"] == len(ids["meta"])


def test_the_split_is_a_pure_function_of_the_seed_and_keeps_the_clean_splits():
    labels = np.repeat(np.arange(4), 25)
    first = selection_indices(labels, 100, fraction=0.5, seed=9)
    np.testing.assert_array_equal(first[1], selection_indices(labels, 100, fraction=0.5, seed=9)[1])
    assert not np.array_equal(first[1], selection_indices(labels, 100, fraction=0.5, seed=10)[1])
    assert sorted(np.bincount(labels[first[1]]).tolist()) == [12, 12, 13, 13]  # 12.5 each: floor or ceil, 50 in all
    clean = load_dataset("digits", seed=1)
    run = prepare_run_data(clean, TrainConfig(dataset="digits", seed=1))
    assert run.train is clean.train and run.test is clean.test
    assert len(run.meta.y) + len(run.valid.y) == len(clean.valid.y)
    assert prepare_run_data(run, TrainConfig(dataset="digits", seed=5)) is run  # prepared once, kept as is


def test_bad_fractions_are_refused():
    with pytest.raises(DataError, match="--selection-fraction"):
        selection_indices(None, 100, fraction=1.0, seed=0)
    with pytest.raises(DataError, match="meta part"):
        selection_indices(None, 3, fraction=0.9, seed=0)
    with pytest.raises(Exception, match="--selection-fraction"):
        TrainConfig(selection_fraction=0.0)


def test_a_search_measures_its_fitness_on_the_meta_part():
    config = TrainConfig(dataset="digits", seed=2)
    search, run = load_search_data(config), load_run_data(config)
    torch.testing.assert_close(search.valid.x, run.meta.x, rtol=0, atol=0)
    torch.testing.assert_close(search.valid.y, run.meta.y, rtol=0, atol=0)


class _Drawn(torch.Tensor):
    """A split's inputs that record every batch drawn from them by an index tensor (evaluation slices are not)."""

    draws: dict[str, list[np.ndarray]] = {}
    name = ""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **(kwargs or {}))
        if func is torch.Tensor.__getitem__ and isinstance(args[1], torch.Tensor):
            cls.draws.setdefault(args[0].name, []).append(args[1].numpy().copy())
        if isinstance(result, torch.Tensor) and func is not torch.Tensor.to:
            return result.as_subclass(torch.Tensor)
        return result


def _drawn(split: Split, name: str) -> Split:
    x = split.x.clone().as_subclass(_Drawn)
    x.name = name
    return Split(x, split.y)


@pytest.mark.slow
@pytest.mark.parametrize("meta_source", ["valid", "train"])
def test_an_adalfl_run_draws_meta_batches_only_from_the_meta_part(tmp_path, meta_source):
    config = TrainConfig(dataset="digits", model="mlp", loss="adalfl", steps=12, init_steps=6, batch_size=16,
                         device="cpu", seed=1, meta_source=meta_source, checkpoint_every=0)
    data = load_run_data(config)
    data = dataclasses.replace(data, **{name: _drawn(getattr(data, name), name)
                                        for name in ("train", "meta", "valid", "test")})
    _Drawn.draws = {}
    results = train(config, dataset=data, out_dir=tmp_path / "run", progress=False)
    drawn = _Drawn.draws
    assert "valid" not in drawn and "test" not in drawn  # the selection and test splits are never trained on
    assert len(drawn["train"]) >= config.steps + config.init_steps
    if meta_source == "valid":  # the offline phase's and the online steps' meta batches: rows of the meta part
        assert len(drawn["meta"]) >= config.steps + config.init_steps
        assert all(rows.max() < len(data.meta.y) for rows in drawn["meta"])
    else:
        assert "meta" not in drawn
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["data_regime"]["selection_samples"] == len(data.valid.y)
    assert saved["valid_error"] == results["valid_error"]
