"""The paper's recipe pieces: poly schedule, 10x head learning rate, main + 0.4 aux loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pspnet import create_model
from pspnet.engine.optim import build_optimizer, poly_lr, segmentation_loss, set_lr
from pspnet.engine.recipe import train_model


def test_poly_schedule_values() -> None:
    assert poly_lr(0.01, 0, 100) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 99, 100) == pytest.approx(0.01 * 0.01**0.9)


def test_new_layers_get_ten_times_the_learning_rate() -> None:
    model = create_model("pspnet_tiny", num_classes=3)
    opt = build_optimizer(model, 0.02)
    set_lr(opt, 0.005)
    backbone, head = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.005) and head["lr"] == pytest.approx(0.05)
    head_params = {id(p) for m in (model.ppm, model.classifier, model.aux_classifier) for p in m.parameters()}
    assert {id(p) for p in head["params"]} == head_params
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert backbone["momentum"] == 0.9 and backbone["weight_decay"] == 1e-4


def test_loss_is_main_plus_weighted_aux_with_ignore() -> None:
    torch.manual_seed(0)
    out = {"out": torch.randn(2, 3, 4, 4), "aux": torch.randn(2, 3, 4, 4)}
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0] = 255
    total, main, aux = segmentation_loss(out, target, aux_weight=0.4)
    keep = target != 255
    by_hand_main = F.cross_entropy(out["out"].permute(0, 2, 3, 1)[keep], target[keep])
    assert main.item() == pytest.approx(by_hand_main.item(), rel=1e-6)
    assert total.item() == pytest.approx(main.item() + 0.4 * aux.item(), rel=1e-6)
    total0, _, aux0 = segmentation_loss(out, target, aux_weight=0.0)
    assert aux0 is None and total0.item() == pytest.approx(main.item())


class _Blobs(torch.utils.data.Dataset):
    """Left half class 0, right half class 1, with a per-class colour: learnable in a few steps."""

    def __len__(self) -> int:
        return 8

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        mask = torch.zeros(32, 32, dtype=torch.long)
        mask[:, 16:] = 1
        image = torch.stack([mask.float() * 2 - 1] * 3) + 0.1 * torch.randn(3, 32, 32)
        return {"image": image, "mask": mask, "index": index}


def test_train_model_reduces_loss_and_logs_history() -> None:
    torch.manual_seed(0)
    model = create_model("fcn_tiny", num_classes=2)
    history = train_model(
        model, _Blobs(), iterations=20, batch_size=4, base_lr=0.01, log_interval=5, progress=False
    )
    assert [h["iter"] for h in history] == [5, 10, 15, 20]
    assert history[-1]["loss"] < history[0]["loss"]
    assert model.training
