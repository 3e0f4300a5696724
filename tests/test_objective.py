"""The U-Net objective (lipsync/train/objective.py): the adaptive balance of the sync
term, its cap, the fixed weight, and the warm-up; the adversarial term and the mouth
discriminator's own training (lipsync/train/adversary.py)."""
import pytest
import torch

from lipsync.train.adversary import Adversary
from lipsync.train.objective import ADVERSARIAL_WEIGHT_CAP, ObjectiveSettings, UNetObjective
from models.discriminator import MouthDiscriminator
from models.syncnet import FACE_ROWS, SyncNet

TINY_AUDIO = (4, 16, 16)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def settings(**changes) -> ObjectiveSettings:
    values = dict(sync_balance="adaptive", sync_ratio=1.0, sync_weight=10.0, sync_warmup_epochs=0, gan_ratio=0.0)
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


def test_warm_up_trains_on_reconstruction_alone_and_skips_syncnet_until_it_ends():
    syncnet = CountingSyncNet(frozen_syncnet())
    objective = UNetObjective(settings(sync_warmup_epochs=2), syncnet=syncnet)
    prediction, truth, audio = batch()
    for epoch in (0, 1):
        objective.set_epoch(epoch)
        terms = objective(prediction, truth, audio)
        assert "sync" not in terms and float(terms["total"].detach()) == float(terms["l1"].detach())
    assert syncnet.calls == 0
    objective.set_epoch(2)
    terms = objective(prediction, truth, audio)
    assert syncnet.calls == 1 and float(terms["sync"].detach()) > 0
    assert float(terms["total"].detach()) > float(terms["l1"].detach())


def frozen_discriminator(seed=0) -> MouthDiscriminator:
    torch.manual_seed(seed)
    return MouthDiscriminator("tiny").requires_grad_(False)


def test_adversarial_term_is_balanced_like_the_sync_term_and_capped():
    discriminator = frozen_discriminator()
    objective = UNetObjective(settings(gan_ratio=0.5), discriminator=discriminator)
    prediction, truth, audio = batch()
    terms = objective(prediction, truth, audio)
    weight = float(terms["adversarial_weight"])
    assert 0 < weight < ADVERSARIAL_WEIGHT_CAP and float(terms["adversarial"].detach()) > 0
    reconstruction_gradient, = torch.autograd.grad(terms["l1"], prediction, retain_graph=True)
    adversarial_gradient, = torch.autograd.grad(weight * terms["adversarial"], prediction, retain_graph=True)
    assert float(adversarial_gradient.norm()) == pytest.approx(0.5 * float(reconstruction_gradient.norm()), rel=1e-3)
    # The discriminator judges the mouth band only: nothing above or below it gets its gradient.
    outside = torch.ones(320, dtype=torch.bool)
    outside[FACE_ROWS] = False
    assert float(adversarial_gradient[:, :, outside].abs().max()) == 0.0
    capped = UNetObjective(settings(gan_ratio=1e9), discriminator=discriminator)(prediction, truth, audio)
    assert float(capped["adversarial_weight"]) == ADVERSARIAL_WEIGHT_CAP
    # Off (ratio 0) and during the warm-up: no discriminator call at all.
    assert "adversarial" not in UNetObjective(settings(), discriminator=discriminator)(prediction, truth, audio)
    warming = UNetObjective(settings(gan_ratio=1.0, sync_warmup_epochs=1), discriminator=discriminator)
    assert "adversarial" not in warming(prediction, truth, audio)
    warming.set_epoch(1)
    assert "adversarial" in warming(prediction, truth, audio)


def test_the_discriminator_learns_to_tell_the_truth_from_a_blur_and_is_frozen_outside_its_step():
    torch.manual_seed(0)
    adversary = Adversary("tiny", lr=1e-3).to(torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(4, 3, 320, 320, generator=generator)
    blurred = torch.nn.functional.avg_pool2d(real, 9, 1, 4)            # what an undertrained U-Net draws
    first = adversary.train_step(real, blurred)
    for _ in range(30):
        last = adversary.train_step(real, blurred)
    assert float(last["discriminator"]) < 0.5 * float(first["discriminator"])
    assert float(last["discriminator_accuracy"]) == 1.0
    assert not any(parameter.requires_grad for parameter in adversary.discriminator.parameters())
    # The U-Net's backward pass reaches the picture through it, and leaves its weights alone.
    drawn = blurred.clone().requires_grad_(True)
    objective = UNetObjective(settings(gan_ratio=1.0), discriminator=adversary.discriminator)
    objective(drawn, real, torch.zeros(4, *TINY_AUDIO))["total"].backward()
    assert drawn.grad is not None and float(drawn.grad.abs().sum()) > 0
    assert all(parameter.grad is None for parameter in adversary.discriminator.parameters())
    # Its state round-trips (latest.pth keeps it for an exact resume).
    again = Adversary("tiny", lr=1e-3).to(torch.device("cpu"))
    again.load_state_dict(adversary.state_dict())
    with torch.no_grad():
        assert torch.equal(again.discriminator.eval()(real), adversary.discriminator.eval()(real))
