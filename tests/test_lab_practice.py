"""The lab pieces of the chapter *Batch norm and dropout in practice*: the small CNN, the recurrent
network, the trials and their parallel runner, fine-tuning with frozen BN, Monte Carlo dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bncourse.lab.convnets import DROPOUTS, small_cnn
from bncourse.lab.data import load_digits
from bncourse.lab.models import bn_layers
from bncourse.lab.practice import (
    cnn_trial,
    finetune,
    mc_dropout_accuracy,
    rnn_trial,
    run_trials,
    set_dropout_train,
    subset,
)
from bncourse.lab.rnn import NormRNN, sign_of_sum


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dropout", DROPOUTS)
def test_small_cnn_places_dropout_where_documented(dropout):
    names = list(small_cnn("bn", dropout)._modules)
    kinds = {n: type(m) for n, m in small_cnn("bn", dropout).named_children()}
    if dropout == "conv":
        assert names.index("drop1") == names.index("relu1") + 1 and kinds["drop1"] is nn.Dropout
    elif dropout == "channel":
        assert names.index("drop1") == names.index("relu1") + 1 and kinds["drop1"] is nn.Dropout2d
    elif dropout == "pool":
        assert names.index("pooldrop1") == names.index("pool1") + 1
    elif dropout == "head":
        assert names[-2:] == ["drop", "head"]
    else:
        assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in kinds.values())
    assert small_cnn("bn", dropout)(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_small_cnn_norms_seeds_and_errors():
    assert isinstance(small_cnn("gn", groups=8).norm2, nn.GroupNorm)
    assert small_cnn("gn", groups=8).norm2.num_groups == 8
    assert small_cnn("ln").norm1.num_groups == 1
    assert small_cnn("none").conv1.bias is not None and small_cnn("bn").conv1.bias is None
    a, b = small_cnn("bn", seed=3), small_cnn("bn", seed=3)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    with pytest.raises(ValueError, match="norm must be"):
        small_cnn("batch")
    with pytest.raises(ValueError, match="drop probability"):
        small_cnn(p=1.0)


def test_norm_rnn_uses_one_bn_per_step_and_reuses_the_last():
    model = NormRNN("bn", hidden=6, max_steps=3)
    assert len(model.norms) == 3
    assert model.step_norm(7) is model.norms[2]
    x, y = sign_of_sum(5, 4)
    assert x.shape == (5, 4, 1) and torch.equal(y, (x.sum((1, 2)) > 0).long())
    assert model(x).shape == (5, 2)
    ln = NormRNN("ln", hidden=6)
    assert ln.step_norm(0) is ln.step_norm(9)
    with pytest.raises(ValueError, match="norm must be"):
        NormRNN("gn")


def test_rnn_trial_learns_and_batch_norm_cannot_learn_online():
    result = rnn_trial("ln", num_train=256, epochs=3, test_lengths=(10,))
    assert result[10] > 70  # chance is 50%
    online = rnn_trial("bn", num_train=8, batch_size=1, epochs=1)
    assert "more than 1 value per channel" in online["error"]


def test_cnn_trial_is_reproducible_and_recalibrates_bn():
    config = dict(norm="bn", epochs=1, num_train=200, recalibrate=True, keep_weights=True)
    a, b = cnn_trial(**config), cnn_trial(**config)
    assert a["test"] == b["test"] and "recalibrated" in a
    assert torch.equal(a["state_dict"]["conv1.weight"], b["state_dict"]["conv1.weight"])
    assert "recalibrated" not in cnn_trial(norm="gn", epochs=1, num_train=200, recalibrate=True)


def test_run_trials_in_processes_equals_serial_and_keeps_order():
    jobs = [
        (cnn_trial, dict(norm=n, epochs=1, num_train=100, seed=s))
        for n in ("bn", "none")
        for s in (0, 1)
    ]
    serial = run_trials(jobs, workers=1)
    parallel = run_trials(jobs, workers=2)
    assert [r["test"] for r in parallel] == [r["test"] for r in serial]
    with pytest.raises(ValueError, match="workers"):
        run_trials(jobs, workers=0)


def test_subset_keeps_the_test_split():
    data = load_digits()
    small = subset(data, 10)
    assert small.num_train == 10 and torch.equal(small.x_test, data.x_test)
    with pytest.raises(ValueError, match="num_train"):
        subset(data, 1)


def _stats(model: nn.Module) -> torch.Tensor:
    return torch.cat([torch.cat([bn.running_mean, bn.running_var]) for _, bn in bn_layers(model)])


def _affine(model: nn.Module) -> torch.Tensor:
    return torch.cat([torch.cat([bn.weight, bn.bias]).detach() for _, bn in bn_layers(model)])


def test_requires_grad_false_does_not_freeze_running_statistics_but_eval_does():
    x, y = torch.randn(64, 1, 8, 8) * 2 + 1, torch.randint(0, 10, (64,))
    model = small_cnn("bn", seed=0)
    stats, affine = _stats(model).clone(), _affine(model).clone()
    finetune(model, x, y, freeze_bn_affine=True, steps=3)
    assert not torch.equal(_stats(model), stats) and torch.equal(_affine(model), affine)
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    model = small_cnn("bn", seed=0)
    finetune(model, x, y, bn_eval=True, steps=3)
    assert torch.equal(_stats(model), stats) and not torch.equal(_affine(model), affine)
    model = small_cnn("bn", seed=0)
    finetune(model, x, y, bn_eval=True, freeze_bn_affine=True, steps=3)
    assert torch.equal(_stats(model), stats) and torch.equal(_affine(model), affine)
    assert not model.training


def test_mc_dropout_samples_dropout_only_and_restores_the_model():
    data = subset(load_digits(), 50)
    model = small_cnn("bn", "conv", p=0.3, seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    set_dropout_train(model)
    assert model.drop1.training and not model.norm1.training
    deterministic = mc_dropout_accuracy(model, data, samples=1, bn_mode="eval")
    mc_dropout_accuracy(model, data, samples=2, bn_mode="train", batch_size=7)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not model.training
    assert deterministic == mc_dropout_accuracy(model, data, samples=1, bn_mode="eval")
    with pytest.raises(ValueError, match="bn_mode"):
        mc_dropout_accuracy(model, data, bn_mode="test")
