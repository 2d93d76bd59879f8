"""TaylorGLO: the CMA-ES wrapper, the invariant, and a short search on digits."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import losses
from toolkit.data.datasets import load_dataset
from toolkit.runs.run import load_run_dataset, train
from toolkit.meta.taylorglo import cma_minimise, satisfies_invariant, search_taylorglo, taylorglo_loss
from toolkit.runs.common import TrainConfig


def test_cma_finds_the_optimum_of_a_shifted_quadratic():
    target = np.array([1.5, -2.0, 0.5])
    calls = []

    def fitness(xs):
        calls.append(len(xs))
        return [float(np.sum((np.asarray(x) - target) ** 2)) for x in xs]

    result = cma_minimise(fitness, [0.0, 0.0, 0.0], sigma0=1.0, population=8, generations=60, seed=3)
    assert np.allclose(result.best, target, atol=1e-3)
    assert result.best_fitness < 1e-6 and set(calls) == {8} and len(result.history) == 60
    again = cma_minimise(fitness, [0.0, 0.0, 0.0], sigma0=1.0, population=8, generations=5, seed=3)
    assert again.history[:5] == result.history[:5]  # same seed, same search


def test_taylorglo_loss_holds_the_parameters_in_the_published_order():
    params = [0.1, 0.2, -1.0, 0.5, 0.3, 0.7, -0.2, 0.4]
    loss = taylorglo_loss(params)
    assert loss.centre.tolist() == pytest.approx(params[:2])
    assert loss.coefficients.tolist() == pytest.approx(params[2:])
    with pytest.raises(ValueError, match="8 parameters"):
        taylorglo_loss([0.0] * 7)


def test_invariant_accepts_cross_entropy_like_losses_and_rejects_reversed_ones():
    assert satisfies_invariant(losses.SymbolicLoss(losses.Y_TRUE * (1 - losses.Y_PRED) ** 2
                                                   + (1 - losses.Y_TRUE) * losses.Y_PRED ** 2))
    assert not satisfies_invariant(losses.SymbolicLoss(losses.Y_TRUE * losses.Y_PRED ** 2))


def test_short_search_beats_its_starting_point_on_digits():
    data = load_dataset("digits", seed=0)
    config = TrainConfig(dataset="digits", model="mlp", steps=100, batch_size=64, lr=1.0, device="cpu",
                         checkpoint_every=0, model_options={"hidden": (32,)})
    unguarded = dataclasses.replace(config, descent_guard=False)  # the candidate alone, as the fitness sees it
    start = train(unguarded, progress=False, dataset=data, initial_loss=taylorglo_loss([0.0] * 8))
    loss, result = search_taylorglo(config, trainer=train, load_data=load_run_dataset, generations=4,
                                    population=8, fitness_steps=100)
    assert start["valid_error"] > 0.8  # the all-zero loss does not train: chance level
    assert result.best_fitness < 0.2   # measured 0.049 (seed 0)
    assert [h["best"] for h in result.history] == sorted((h["best"] for h in result.history), reverse=True)
    assert result.history[-1]["evaluations"] == 32
    assert isinstance(loss, losses.TaylorLoss)


@pytest.mark.slow
def test_parallel_evaluation_gives_the_same_search_as_sequential():
    config = TrainConfig(dataset="digits", model="mlp", steps=20, batch_size=64, lr=0.1, device="cpu",
                         checkpoint_every=0, model_options={"hidden": (16,)})
    runs = [search_taylorglo(config, trainer=train, load_data=load_run_dataset, generations=2, population=4,
                             fitness_steps=20, jobs=jobs)[1] for jobs in (1, 2)]
    assert runs[0].history == runs[1].history and runs[0].best == runs[1].best
