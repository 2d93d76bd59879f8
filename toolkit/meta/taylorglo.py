"""TaylorGLO (Gonzalez & Miikkulainen, arXiv 2002.00059): CMA-ES over Taylor-polynomial losses.

The search is offline: each candidate is the 8 parameters of
``losses.TaylorLoss.taylorglo()`` (centre θ0, θ1 and coefficients θ2…θ7); its
fitness is the validation error of the base model after a short training run with
that loss, from the same seeded initialisation for every candidate. The search
starts at zero with σ = 1.2, as in the paper. CMA-ES itself is the maintained
``cma`` package; candidates can be evaluated in parallel processes.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

import losses

TAYLORGLO_SIZE = 8


@dataclass(frozen=True)
class SearchResult:
    """The outcome of a CMA-ES search.

    Attributes:
        best: the best parameter vector seen.
        best_fitness: its fitness (lower is better).
        history: one dict per generation: generation, best, mean, sigma, evaluations.
    """

    best: list[float]
    best_fitness: float
    history: list[dict]


def cma_minimise(fitness: Callable[[list[np.ndarray]], Sequence[float]], x0: Sequence[float], *,
                 sigma0: float = 1.2, population: int | None = None, generations: int = 10, seed: int = 0,
                 on_generation: Callable[[dict], None] | None = None) -> SearchResult:
    """Minimise a batch fitness function with CMA-ES (``cma.CMAEvolutionStrategy``).

    Args:
        fitness: maps a list of candidate vectors to their fitness values (lower is better);
            receiving the whole population lets the caller evaluate it in parallel.
        x0: the starting mean; sigma0: the initial step size.
        population: candidates per generation (None: CMA-ES's default 4 + 3 ln n).
        generations: number of generations.
        seed: seeds CMA-ES's sampler (the same seed gives the same search).
        on_generation: called with each generation's record.
    """
    import cma

    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    options = {"seed": seed + 1, "verbose": -9, "maxiter": generations}  # cma treats seed 0 as "random"
    if population is not None:
        if population < 2:
            raise ValueError(f"population must be >= 2, got {population}")
        options["popsize"] = population
    strategy = cma.CMAEvolutionStrategy(list(map(float, x0)), sigma0, options)
    best, best_fitness, history = list(map(float, x0)), float("inf"), []
    for generation in range(generations):
        candidates = strategy.ask()
        sampler_state = np.random.get_state()  # CMA-ES samples from numpy's global RNG, which a
        scores = fitness(candidates)          # fitness run in this process may reseed
        np.random.set_state(sampler_state)
        values = [float(v) if np.isfinite(v) else 1e30 for v in scores]
        strategy.tell(candidates, values)
        index = int(np.argmin(values))
        if values[index] < best_fitness:
            best, best_fitness = [float(v) for v in candidates[index]], values[index]
        record = {"generation": generation + 1, "best": best_fitness, "generation_best": values[index],
                  "mean": float(np.mean(values)), "sigma": float(strategy.sigma),
                  "evaluations": (generation + 1) * len(candidates)}
        history.append(record)
        if on_generation is not None:
            on_generation(record)
    return SearchResult(best=best, best_fitness=best_fitness, history=history)


def taylorglo_loss(params: Sequence[float], *, task: str = "classification") -> losses.TaylorLoss:
    """``TaylorLoss.taylorglo()`` holding ``params`` = (θ0, θ1 centre; θ2…θ7 coefficients)."""
    if len(params) != TAYLORGLO_SIZE:
        raise ValueError(f"TaylorGLO has {TAYLORGLO_SIZE} parameters, got {len(params)}")
    loss = losses.TaylorLoss.taylorglo(task=task)
    values = torch.as_tensor(np.asarray(params, dtype=np.float64), dtype=loss.centre.dtype)
    with torch.no_grad():
        loss.centre.copy_(values[:2])
        loss.coefficients.copy_(values[2:])
    return loss


def satisfies_invariant(loss: losses.LearnedLoss, *, points: int = 64) -> bool:
    """TaylorGLO-style sanity check of a classification loss, before paying for training.

    On a grid of probabilities p ∈ (0, 1), descent must favour the true class:
    ∂ℓ/∂p at y = 1 must be below ∂ℓ/∂p at y = 0, so a gradient step raises the
    true class's probability relative to the others. Candidates that fail are given
    the worst fitness without training.
    """
    p = torch.linspace(0.01, 0.99, points, dtype=torch.float64).requires_grad_(True)
    probe = losses.loss_from_dict(losses.loss_to_dict(loss, formula=False)).double()
    with torch.enable_grad():
        slope_true = torch.autograd.grad(probe.elementwise(p, torch.ones_like(p)).sum(), p)[0]
        slope_false = torch.autograd.grad(probe.elementwise(p, torch.zeros_like(p)).sum(), p)[0]
    return bool(torch.all(slope_true < slope_false))


# ---------------------------------------------------------------- fitness workers
_WORKER: dict = {}


def _worker_init(config, threads: int, trainer: Callable, load_data: Callable) -> None:
    torch.set_num_threads(threads)
    _WORKER["config"] = config
    _WORKER["trainer"] = trainer
    _WORKER["data"] = load_data(config)


def _fitness(params: Sequence[float], fitness_steps: int, invariant: bool) -> float:
    config, data, train = _WORKER["config"], _WORKER["data"], _WORKER["trainer"]
    loss = taylorglo_loss(params, task=data.task)
    if invariant and data.task == "classification" and not satisfies_invariant(loss):
        return 1.0
    # The fitness is the candidate's own: no descent guard, which would replace its bad steps by the
    # task loss's and make a useless candidate look as good as cross-entropy.
    short = dataclasses.replace(config, loss="ce" if data.task == "classification" else "mse", loss_from=None,
                                adapt=False, steps=fitness_steps, checkpoint_every=0, eval_every=0,
                                descent_guard=False)
    results = train(short, progress=False, dataset=data, initial_loss=loss)
    value = results["valid_error"] if data.task == "classification" else results["valid_mse"]
    return value if np.isfinite(value) else 1e30


def search_taylorglo(config, *, trainer: Callable, load_data: Callable, task: str = "classification",
                     generations: int = 10, population: int | None = None, fitness_steps: int = 200,
                     invariant: bool = True, jobs: int = 1, seed: int = 0,
                     on_generation: Callable[[dict], None] | None = None) -> tuple[losses.TaylorLoss, SearchResult]:
    """Search a TaylorGLO loss for ``config``'s dataset and model.

    Args:
        config: a :class:`toolkit.runs.common.TrainConfig` (dataset, model, optimiser, seed).
        trainer: trains one candidate, called as ``trainer(config, progress=False, dataset=data,
            initial_loss=loss)`` and returning results with ``valid_error``/``valid_mse``
            (``toolkit.runs.run.train``; passed in so the search does not import the training loop).
        load_data: ``load_data(config)`` gives the dataset (``toolkit.runs.run.load_run_dataset``).
            Both must be module-level functions when ``jobs > 1`` (they go to worker processes).
        task: the dataset's task.
        generations, population: CMA-ES budget (population None: CMA-ES's default, 10 for n = 8).
        fitness_steps: base training steps per candidate evaluation.
        invariant: reject candidates failing :func:`satisfies_invariant` without training.
        jobs: parallel worker processes for the evaluations.
        seed: seeds CMA-ES.

    Returns:
        (best loss, search result).
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    if jobs == 1:
        _worker_init(config, torch.get_num_threads(), trainer, load_data)
        evaluate = lambda xs: [_fitness(x, fitness_steps, invariant) for x in xs]  # noqa: E731
        result = cma_minimise(evaluate, [0.0] * TAYLORGLO_SIZE, population=population, generations=generations,
                              seed=seed, on_generation=on_generation)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                                 initargs=(config, threads, trainer, load_data)) as pool:
            evaluate = lambda xs: list(pool.map(_fitness, xs, [fitness_steps] * len(xs),  # noqa: E731
                                                [invariant] * len(xs)))
            result = cma_minimise(evaluate, [0.0] * TAYLORGLO_SIZE, population=population,
                                  generations=generations, seed=seed, on_generation=on_generation)
    return taylorglo_loss(result.best, task=task), result
