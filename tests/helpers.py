"""Small float64 models and batches shared by the tests."""
from __future__ import annotations

import torch
from torch import nn


def tiny_mlp(inputs: int = 5, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 7), nn.Tanh(), nn.Linear(7, classes)).double()


def tiny_bn_dropout(inputs: int = 5, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.25),
                         nn.Linear(6, classes)).double()


def tiny_conv(classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, classes)).double()


def batch(n: int, shape: tuple[int, ...], classes: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (n,), generator=g))


class Shared(nn.Module):
    """The same layer used twice (its tangent sums both uses)."""

    def __init__(self):
        super().__init__()
        self.layer, self.act, self.out = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.act(self.layer(self.act(self.layer(x)))))


def _build(name, **options):
    from toolkit.models.zoo import build_model
    return build_model(name, **options)


CHAINS = {
    "lenet5": (lambda: _build("lenet5", input_shape=(1, 28, 28), num_outputs=10), (6, 1, 28, 28)),
    "mlp-relu": (lambda: _build("mlp", input_shape=(12,), num_outputs=4, hidden=(9, 7)), (8, 12)),
    "logreg": (lambda: _build("logreg", input_shape=(3, 4, 4), num_outputs=5), (5, 3, 4, 4)),
    "tiny-mlp": (tiny_mlp, (6, 5)),
    "tiny-conv": (tiny_conv, (6, 1, 8, 8)),
    "sigmoid-leaky-conv1d": (lambda: nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1, stride=2, bias=False), nn.Sigmoid(), nn.AvgPool1d(2), nn.Flatten(),
        nn.Linear(6, 4), nn.LeakyReLU(0.1), nn.Dropout(0.0), nn.Linear(4, 2)), (5, 2, 8)),
    "shared-weights": (Shared, (6, 4)),
    # Ends in an activation: the reverse pass meets the caller's cotangent at a pointwise layer.
    "ends-in-sigmoid": (lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.Sigmoid()), (6, 5)),
    "odd-pools": (lambda: nn.Sequential(
        nn.Conv2d(1, 2, 2), nn.AvgPool2d(2), nn.Tanh(), nn.AvgPool2d(3, ceil_mode=True), nn.ReLU(),
        nn.AvgPool2d((2, 1)), nn.AvgPool2d(2, stride=1, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(2, 3)), (4, 1, 20, 20)),
    # A grouped convolution after a tangent-carrying layer cannot stack its channels: two convolutions.
    "grouped-conv": (lambda: nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.Tanh(), nn.Conv2d(4, 6, 3, groups=2, stride=2), nn.Flatten(), nn.Linear(54, 3)),
        (3, 2, 9, 9)),
}
"""Varied layer stacks (pools, grouped convolutions, shared weights, ends in an activation):
name -> (factory, input shape)."""


class InPlace(nn.Module):
    """An in-place operation between layers (once silently mistaken for a plain chain)."""

    def __init__(self, inputs: int = 5, classes: int = 3):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(inputs, 6), nn.Tanh(), nn.Linear(6, classes)

    def forward(self, x):
        h = self.fc1(x)
        h.mul_(3.0)
        return self.fc2(self.act(h))


def with_hooks(inputs: int = 5, classes: int = 3) -> nn.Module:
    """A forward hook that rescales a layer's output and a pre-hook that shifts an input."""
    model = nn.Sequential(nn.Linear(inputs, 6), nn.Tanh(), nn.Linear(6, classes)).double()
    model[0].register_forward_hook(lambda module, args, out: out * 2.0)
    model[2].register_forward_pre_hook(lambda module, args: (args[0] + 0.5,))
    return model


class Residual(nn.Module):
    """BatchNorm, max pooling and a residual block: a small CNN a user would write."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(),
                                   nn.Conv2d(4, 4, 3, padding=1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4, classes))

    def forward(self, x):
        h = self.stem(x)
        return self.head(torch.relu(h + self.block(h)))


STRUCTURES = {
    "in-place": (lambda: InPlace().double(), (6, 5)),
    "hooks": (with_hooks, (6, 5)),
    "residual-bn-maxpool-dropout": (lambda: Residual().double(), (6, 1, 8, 8)),
}
"""Models whose structure a hand-written route would have to recognise: name -> (factory, input shape)."""

FROZEN = {
    "first-conv": lambda m: m.features[0].requires_grad_(False),
    "a-weight-only": lambda m: m.classifier[3].weight.requires_grad_(False),
    "a-bias-only": lambda m: m.features[3].bias.requires_grad_(False),
    "all-but-last-bias": lambda m: [p.requires_grad_(False) for k, p in m.named_parameters()
                                    if k != "classifier.5.bias"],
}
"""Ways to freeze parts of LeNet-5 (fine-tuning): name -> function of the model."""


def central_differences(f, tensors: dict[str, torch.Tensor], *, eps: float = 1e-6):
    """Yield ``(name, index, (f(t + eps·e) − f(t − eps·e)) / 2eps)`` for every coordinate of every tensor
    in ``tensors`` (name → tensor; copies are perturbed, never ``tensors`` itself). ``f`` maps such a
    dict to a scalar; the numeric derivative comes back as a float."""
    for name, value in tensors.items():
        for index in range(value.numel()):
            plus = {k: v.clone() for k, v in tensors.items()}
            minus = {k: v.clone() for k, v in tensors.items()}
            plus[name].view(-1)[index] += eps
            minus[name].view(-1)[index] -= eps
            yield name, index, float((f(plus) - f(minus)) / (2 * eps))


def assert_meta_gradients_close(fast, naive, *, skip=(), rtol: float = 1e-8) -> None:
    """Every meta-gradient of ``fast`` within ``rtol`` of ``naive``'s in relative L2 norm (names in
    ``skip`` excepted)."""
    for k in fast.meta_grads:
        if k in skip:
            continue
        err = (fast.meta_grads[k] - naive.meta_grads[k]).norm() / naive.meta_grads[k].norm()
        assert err < rtol, (k, float(err))


def crash_once(config, out_dir: str, threads):
    """A study worker that dies (as when killed) on its first attempt at each run, then trains.

    It lives here, not in a test module, so that worker processes import only torch to unpickle it.
    """
    import os
    from pathlib import Path

    from toolkit.runs.study import _train_one

    marker = Path(out_dir + ".crashed")
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(1)
    return _train_one(config, out_dir, threads)


def run_lfl(*args, cwd=None):
    """``lfl ARGS`` in this process with click's CliRunner: an object with returncode, stdout and stderr
    (as subprocess.run gives), through the same one-line error handling as the console script."""
    import contextlib
    import subprocess

    from click.testing import CliRunner

    from cli import cli

    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def write_run(path, *, loss: str, seed: int, error: float, steps: int = 10, dataset: str = "digits",
              task: str = "classification", config: dict | None = None, history=(), snapshots=(),
              final_loss=None, torn_snapshot: bool = False) -> None:
    """A run directory as ``lfl train --out`` leaves it, with the numbers a test chooses.

    results.json always; history.jsonl and loss_snapshots.jsonl (``snapshots``: (step, loss module)
    pairs) when given; loss.json from ``final_loss``; ``torn_snapshot`` appends a half-written line,
    as a killed run leaves it.
    """
    import json
    from pathlib import Path

    import losses

    path = Path(path)
    path.mkdir(parents=True)
    results = {"dataset": dataset, "model": "mlp", "loss": loss, "seed": seed, "steps": steps, "task": task,
               "test_error": error, "config": {"loss_param": "mlp", **(config or {})}}
    (path / "results.json").write_text(json.dumps(results))
    if history:
        (path / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    if snapshots:
        lines = "".join(json.dumps({"phase": "train", "step": s, "loss": losses.loss_to_dict(m)}) + "\n"
                        for s, m in snapshots)
        (path / "loss_snapshots.jsonl").write_text(lines + ('{"phase": "train", "st' if torn_snapshot else ""))
    if final_loss is not None:
        losses.save_loss(final_loss, path / "loss.json")


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """``lfl ARGV`` as the console script runs it, in this process: (exit code, stdout, stderr)."""
    from cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
