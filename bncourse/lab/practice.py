"""The experiments of the chapter *Batch norm and dropout in practice*, as picklable trials.

Each trial is a plain function of a configuration that returns a small dict (accuracies, and the
trained weights where a later measurement needs them), so :func:`run_trials` can spread the
trials of a chapter over the CPU cores (one thread each) and return them in order. Every trial
is seeded: its weights from ``seed``, its batch order and dropout masks from ``seed`` as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from bncourse.lab.convnets import small_cnn
from bncourse.lab.data import Dataset, load_digits
from bncourse.lab.models import bn_layers
from bncourse.lab.recalibrate import recalibrate_bn
from bncourse.lab.rnn import NormRNN, rnn_accuracy, sign_of_sum, train_rnn
from bncourse.lab.train import evaluate, train

__all__ = [
    "QUOTED",
    "subset",
    "cnn_trial",
    "rnn_trial",
    "run_trials",
    "mc_dropout_accuracy",
    "set_dropout_train",
    "finetune",
]

#: Numbers quoted from the literature and the seed articles, with where they come from.
QUOTED = {
    # Seed article 003: ResNet-type models on ImageNet degrade clearly from batch 16 to 8.
    "seed_batch_from": 16,
    "seed_batch_to": 8,
    # Wu & He (2018), abstract: ResNet-50 on ImageNet, batch of 2 images per GPU, GN's error is
    # 10.6 points lower than BN's.
    "gn_batch": 2,
    "gn_gap_points": 10.6,
    # Vaswani et al. (2017), section 5.4 "Regularization": residual dropout P_drop = 0.1 for the
    # base model.
    "transformer_p": 0.1,
}


def subset(data: Dataset, num_train: int) -> Dataset:
    """``data`` with only its first ``num_train`` training samples (the test split unchanged)."""
    if not 2 <= num_train <= data.num_train:
        raise ValueError(f"num_train must lie in [2, {data.num_train}], got {num_train!r}")
    return Dataset(
        data.name,
        data.x_train[:num_train],
        data.y_train[:num_train],
        data.x_test,
        data.y_test,
        data.num_classes,
    )


def cnn_trial(
    norm: str = "none",
    dropout: str = "none",
    p: float = 0.2,
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 0.05,
    num_train: int | None = None,
    recalibrate: bool = False,
    keep_weights: bool = False,
) -> dict:
    """Train :func:`~bncourse.lab.convnets.small_cnn` on the digits; test accuracy in percent.

    ``recalibrate`` adds ``recalibrated``: the accuracy after BN's running statistics are
    recomputed on the training set in batches of 256 (:func:`recalibrate_bn`). ``keep_weights``
    adds the trained ``state_dict``.
    """
    data = load_digits()
    if num_train is not None:
        data = subset(data, num_train)
    model = small_cnn(norm, dropout, p=p, seed=seed)
    history = train(
        model,
        data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=False,
        device="cpu",
    )
    out = {"test": 100 * history.test_acc[-1], "cpu_seconds": history.cpu_seconds}
    if recalibrate and norm == "bn":
        out["recalibrated"] = 100 * evaluate(recalibrate_bn(model, data), data)
    if keep_weights:
        out["state_dict"] = model.state_dict()
    return out


def rnn_trial(
    norm: str = "none",
    seed: int = 0,
    num_train: int = 512,
    length: int = 10,
    test_lengths: Sequence[int] = (10, 20),
    epochs: int = 5,
    batch_size: int = 32,
) -> dict:
    """Train :class:`~bncourse.lab.rnn.NormRNN` on sequences of ``length``; accuracy in percent
    on fresh test sequences of each of ``test_lengths``.

    ``batch_size=1`` is online learning, one sequence per update: batch norm cannot train on it,
    and the trial returns ``{"error": message}`` with the message PyTorch raises.
    """
    x, y = sign_of_sum(num_train, length, seed=1000 + seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NormRNN(norm, max_steps=length)
    try:
        train_rnn(model, x, y, epochs=epochs, batch_size=batch_size, seed=seed)
    except ValueError as error:
        return {"error": str(error)}
    out = {}
    for t in test_lengths:
        xt, yt = sign_of_sum(1000, t, seed=2000 + t)
        out[t] = 100 * rnn_accuracy(model, xt, yt)
    return out


def _call(job: tuple[Callable[..., dict], dict]) -> dict:
    fn, config = job
    torch.set_num_threads(1)
    return fn(**config)


def run_trials(
    jobs: Sequence[tuple[Callable[..., dict], dict]], workers: int | None = None
) -> list[dict]:
    """``[fn(**config) for fn, config in jobs]`` on ``workers`` processes (default:
    :func:`bncourse.lab.parallel.default_workers`), one thread each; ``fn`` must be importable
    (a module-level function)."""
    from bncourse.lab.parallel import in_processes

    return in_processes(_call, list(jobs), workers)


def set_dropout_train(model: nn.Module) -> nn.Module:
    """Put the model in eval mode, then only its dropout layers back in training mode."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.train()
    return model


@torch.no_grad()
def mc_dropout_accuracy(
    model: nn.Module,
    data: Dataset,
    samples: int = 20,
    bn_mode: str = "eval",
    batch_size: int = 16,
    seed: int = 0,
) -> float:
    """Accuracy (percent) of the mean softmax over ``samples`` dropout passes on the test split.

    ``bn_mode="eval"``: only dropout samples, BN uses its running statistics. ``bn_mode="train"``:
    the whole model in training mode (``model.train()``), so BN normalizes each test batch of
    ``batch_size`` with that batch's statistics. BN's running statistics are restored afterwards.
    """
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = data.split("test")
    probs = torch.zeros(len(y), data.num_classes)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if bn_mode == "eval":
                set_dropout_train(model)
            else:
                model.train()
            chunks = list(torch.arange(len(y)).split(batch_size))
            if len(chunks) > 1 and len(chunks[-1]) < 2:  # BN cannot train on one sample
                chunks[-2:] = [torch.cat(chunks[-2:])]
            for _ in range(samples):
                for idx in chunks:
                    probs[idx] += model(x[idx]).softmax(1)
    finally:
        model.load_state_dict(saved)
        model.eval()
    return 100 * (probs.argmax(1) == y).float().mean().item()


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    bn_eval: bool = False,
    freeze_bn_affine: bool = False,
    steps: int = 20,
    batch_size: int = 32,
    lr: float = 0.01,
    seed: int = 0,
) -> nn.Module:
    """Fine-tune ``model`` in place for ``steps`` SGD steps on ``(x, y)``; returned in eval mode.

    The model is put in training mode; ``bn_eval`` then puts its BN layers back in evaluation
    mode (their running statistics stay as they are and they normalize with them);
    ``freeze_bn_affine`` sets ``requires_grad=False`` on the BN layers' weight and bias, which
    stops the optimizer but not the running statistics. The flags are restored afterwards.
    """
    layers = [bn for _, bn in bn_layers(model)]
    saved = [[p.requires_grad for p in bn.parameters()] for bn in layers]
    g = torch.Generator().manual_seed(seed)
    model.train()
    for bn in layers:
        if bn_eval:
            bn.eval()
        if freeze_bn_affine:
            bn.requires_grad_(False)
    try:
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(steps):
                idx = torch.randint(len(y), (batch_size,), generator=g)
                loss = loss_fn(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        for bn, flags in zip(layers, saved, strict=True):
            for p, flag in zip(bn.parameters(), flags, strict=True):
                p.requires_grad_(flag)
        model.eval()
    return model
