"""The steering training loop: it fits, distils towards a teacher, mirrors with the steering negated, and
caches its checkpoint (a tiny PilotNet, real torch training)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgematrix.errors import EdgeMatrixError
from edgematrix.matrix.schema import TrainConfig
from edgematrix.models import create_model
from edgematrix.train.distill import DistillConfig
from edgematrix.train.steering import distill_steering_model, init_weights, train_steering, train_steering_model

SHAPE = [1, 3, 66, 200]


def _split(n: int = 24, seed: int = 0) -> SimpleNamespace:
    """Dark frames with a bright vertical band; the steering is where the band is (-1 left edge, +1 right
    edge): learnable, and mirroring a frame negates it, as on a road."""
    rng = np.random.default_rng(seed)
    x = rng.integers(8, 192, n)
    images = rng.integers(0, 40, (n, 3, 66, 200), dtype=np.uint8)
    for i, c in enumerate(x):
        images[i, :, :, c - 8 : c + 8] = 230
    return SimpleNamespace(images=images, steering=((x - 99.5) / 99.5).astype(np.float32))


def _mse(model: torch.nn.Module, split: SimpleNamespace) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(split.images).float()).reshape(-1).numpy()
    return float(np.mean((pred - split.steering) ** 2))


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("pilotnet", SHAPE, width=0.25)


def test_training_fits_the_labels() -> None:
    split, model = _split(), _tiny()
    before = _mse(model, split)
    history = train_steering(
        model, split.images, split.steering, epochs=20, batch_size=8, lr=3e-3, warmup_fraction=0.0, flip=False
    )
    assert [h["epoch"] for h in history] == list(range(1, 21)) and "kd" not in history[0]
    assert history[-1]["task"] < history[0]["task"] / 3
    assert _mse(model, split) < before / 3
    assert not model.training  # left in eval mode


def test_flip_mirrors_the_frame_and_negates_the_label() -> None:
    split = _split(16)
    mirrored = SimpleNamespace(images=split.images[..., ::-1].copy(), steering=-split.steering)
    model = _tiny()
    train_steering(model, split.images, split.steering, epochs=20, batch_size=8, lr=3e-3, flip=True, seed=1)
    # trained on both orientations: the mirrored frames are fitted as well as the originals
    assert _mse(model, mirrored) < 2.5 * _mse(model, split) + 1e-3


def test_distillation_pulls_the_student_to_the_teacher() -> None:
    split = _split()
    teacher = _tiny()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = copy.deepcopy(_tiny())
    x = torch.from_numpy(split.images).float()

    def gap() -> float:
        with torch.no_grad():
            return float(torch.mean((student(x) - teacher(x)) ** 2))

    before = gap()
    config = DistillConfig(epochs=10, batch_size=8, lr=3e-3, alpha=1.0, warmup_fraction=0.0, flip=False)
    result = distill_steering_model(student, teacher, split, config, None, progress=False, label="kd")
    assert not result.cache_hit and len(result.history) == 10 and "kd" in result.history[0]
    assert result.history[-1]["kd"] < result.history[0]["kd"] / 3
    assert gap() < before / 3
    assert all(not p.requires_grad for p in teacher.parameters())  # frozen


def test_checkpoint_is_written_then_reused(tmp_path: Path) -> None:
    split, ckpt = _split(16), tmp_path / "pilotnet.pt"
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, device="cpu")
    model = _tiny()
    first = train_steering_model(model, split, config, ckpt, progress=False)
    assert not first.cache_hit and ckpt.is_file() and len(first.history) == 2
    again = _tiny()
    with torch.no_grad():
        for p in again.parameters():
            p.zero_()
    second = train_steering_model(again, split, config, ckpt, progress=False)
    assert second.cache_hit and second.history == first.history
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bad_inputs_are_refused() -> None:
    split, model = _split(8), _tiny()
    with pytest.raises(EdgeMatrixError, match="as many labels as frames"):
        train_steering(model, split.images, split.steering[:4], epochs=1, batch_size=4, lr=1e-3)
    with pytest.raises(EdgeMatrixError, match=r"alpha .* must be in \[0, 1\]"):
        train_steering(model, split.images, split.steering, epochs=1, batch_size=4, lr=1e-3, alpha=2.0)
    with pytest.raises(EdgeMatrixError, match="finetune lr must be > 0"):
        distill_steering_model(model, model, split, DistillConfig(lr=0.0), None, progress=False)


def test_training_starts_from_weights_drawn_under_its_seed(tmp_path: Path) -> None:
    a, b, c = create_model("pilotnet", SHAPE), create_model("pilotnet", SHAPE), create_model("pilotnet", SHAPE)
    torch.manual_seed(123)  # whatever the process drew before does not matter
    init_weights(a, 7)
    torch.rand(5)
    init_weights(b, 7)
    init_weights(c, 8)
    for (name, pa), pb, pc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb), name
        assert not torch.equal(pa, pc), name
    # so two trainings of differently drawn models with one config give the same checkpoint
    split, config = _split(8), TrainConfig(epochs=1, batch_size=8, lr=1e-3, device="cpu", seed=3)
    x, y = create_model("pilotnet", SHAPE, width=0.25), create_model("pilotnet", SHAPE, width=0.25)
    train_steering_model(x, split, config, tmp_path / "x.pt", progress=False)
    train_steering_model(y, split, config, tmp_path / "y.pt", progress=False)
    for (name, px), py in zip(x.state_dict().items(), y.state_dict().values(), strict=True):
        assert torch.equal(px, py), name
