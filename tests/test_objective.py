"""The U-Net objective (lipsync/train/objective.py): the lips' weights, the adaptive
balance of the sync term, its warm-up, and the SyncNet face-feature loss."""
import pytest
import torch

from data_utils import crop
from lipsync.train.objective import ObjectiveSettings, UNetObjective, pixel_weights
from models.syncnet import SyncNet

TINY_AUDIO = (4, 16, 16)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def settings(**changes) -> ObjectiveSettings:
    values = dict(sync_balance="adaptive", sync_ratio=1.0, sync_weight=10.0, sync_warmup_epochs=0,
                  lip_weight=1.0, face_feature_weight=0.0)
    values.update(changes)
    return ObjectiveSettings(**values)


def frozen_syncnet(seed=0) -> SyncNet:
    torch.manual_seed(seed)
    model = SyncNet("ave", TINY_AUDIO, "tiny").eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def batch(seed=0, size=2):
    generator = torch.Generator().manual_seed(seed)
    prediction = torch.rand(size, 3, 320, 320, generator=generator).requires_grad_(True)
    truth = torch.rand(size, 3, 320, 320, generator=generator)
    audio = torch.randn(size, *TINY_AUDIO, generator=generator)
    return prediction, truth, audio


def test_lip_weights_count_the_lips_box_that_many_times_and_average_one():
    weights = pixel_weights(4.0, "cpu")[0, 0]
    assert weights.shape == (crop.INNER_SIZE, crop.INNER_SIZE)
    assert float(weights.mean()) == pytest.approx(1.0, rel=1e-5)
    inside = weights[crop.LIP_TOP + 5, (crop.LIP_LEFT + crop.LIP_RIGHT) // 2]
    outside = weights[crop.LIP_BOTTOM + 5, 10]
    assert float(inside / outside) == pytest.approx(4.0, rel=1e-5)
    assert torch.allclose(pixel_weights(1.0, "cpu"), torch.ones(1, 1, 320, 320))


def test_lip_weight_makes_an_error_on_the_lips_cost_more_than_the_same_error_elsewhere():
    objective = UNetObjective(settings(lip_weight=5.0))
    truth = torch.zeros(1, 3, 320, 320)
    on_lips, on_neck = truth.clone(), truth.clone()
    on_lips[..., crop.LIP_TOP:crop.LIP_TOP + 20, crop.LIP_LEFT:crop.LIP_LEFT + 20] = 1
    on_neck[..., crop.MASK_BOTTOM - 20:crop.MASK_BOTTOM, 10:30] = 1
    audio = torch.zeros(1, *TINY_AUDIO)
    assert float(objective(on_lips, truth, audio)["l1"]) == pytest.approx(
        5 * float(objective(on_neck, truth, audio)["l1"]), rel=1e-4)


def test_adaptive_balance_holds_the_sync_gradient_at_the_ratio_of_the_reconstruction_gradient():
    syncnet = frozen_syncnet()
    for ratio in (0.25, 1.0):
        objective = UNetObjective(settings(sync_ratio=ratio, sync_weight=1e6), syncnet=syncnet)
        prediction, truth, audio = batch()
        terms = objective(prediction, truth, audio)
        weight = float(terms["sync_weight"])
        reconstruction_gradient, = torch.autograd.grad(terms["l1"], prediction, retain_graph=True)
        sync_gradient, = torch.autograd.grad(weight * terms["sync"], prediction, retain_graph=True)
        assert float(sync_gradient.norm()) == pytest.approx(ratio * float(reconstruction_gradient.norm()), rel=1e-3)
        total_gradient, = torch.autograd.grad(terms["total"], prediction)
        assert torch.allclose(total_gradient, reconstruction_gradient + sync_gradient, atol=1e-9)


def test_adaptive_weight_never_exceeds_the_cap_and_fixed_is_the_weight_itself():
    syncnet = frozen_syncnet()
    prediction, truth, audio = batch()
    capped = UNetObjective(settings(sync_ratio=1e9, sync_weight=3.0), syncnet=syncnet)(prediction, truth, audio)
    assert float(capped["sync_weight"]) == 3.0
    fixed = UNetObjective(settings(sync_balance="fixed", sync_weight=7.0), syncnet=syncnet)(prediction, truth, audio)
    assert float(fixed["sync_weight"]) == 7.0
    assert float(fixed["total"].detach()) == pytest.approx(float((fixed["l1"] + 7.0 * fixed["sync"]).detach()), rel=1e-5)


class CountingSyncNet(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, image, audio):
        self.calls += 1
        return self.inner(image, audio)

    def face_features(self, image):
        return self.inner.face_features(image)


def test_warm_up_trains_on_reconstruction_alone_and_skips_syncnet_until_it_ends():
    syncnet = CountingSyncNet(frozen_syncnet())
    objective = UNetObjective(settings(sync_warmup_epochs=2), syncnet=syncnet)
    prediction, truth, audio = batch()
    for epoch in (0, 1):
        objective.set_epoch(epoch)
        terms = objective(prediction, truth, audio)
        assert "sync" not in terms and float(terms["total"]) == float(terms["l1"])
    assert syncnet.calls == 0
    objective.set_epoch(2)
    terms = objective(prediction, truth, audio)
    assert syncnet.calls == 1 and float(terms["sync"]) > 0
    assert float(terms["total"]) > float(terms["l1"])


def test_face_feature_loss_is_zero_for_the_truth_and_pulls_the_drawn_mouth_towards_it():
    syncnet = frozen_syncnet()
    objective = UNetObjective(settings(face_feature_weight=0.5, sync_warmup_epochs=99), syncnet=syncnet)
    prediction, truth, audio = batch()
    exact = objective(truth.clone().requires_grad_(True), truth, audio)
    assert float(exact["face_features"]) == pytest.approx(0.0, abs=1e-7)
    terms = objective(prediction, truth, audio)
    assert float(terms["face_features"]) > 0
    assert float(terms["total"]) == pytest.approx(float(terms["l1"] + 0.5 * terms["face_features"]), rel=1e-5)
    gradient, = torch.autograd.grad(terms["face_features"], prediction)
    # SyncNet looks at the mouth band only: the loss moves those rows and nothing above them.
    assert float(gradient[..., crop.MASK_TOP:crop.MASK_TOP + 160, :].abs().sum()) > 0
    assert float(gradient[..., :crop.MASK_TOP, :].abs().sum()) == 0
    # A small step along the gradient brings the drawn features closer to the truth's.
    stepped = (prediction - 50 * gradient).detach()
    assert float(objective(stepped, truth, audio)["face_features"]) < float(terms["face_features"])
