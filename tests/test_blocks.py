"""Shared adaptation building blocks: analytic checks."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.blocks import (EMATeacher, ImagePool, OutputDiscriminator, PatchDiscriminator, ResidualBlock,
                              ResnetGenerator, entropy_map, gan_adam, gan_loss, sigmoid_rampup)
from helpers import method_module


def test_generator_and_discriminators_shapes():
    x = torch.randn(2, 1, 32, 32)
    assert ResnetGenerator(1, 1, width=8, blocks=2)(x).shape == (2, 1, 32, 32)
    assert PatchDiscriminator(1, width=8, layers=3)(x).shape == (2, 1, 2, 2)
    assert OutputDiscriminator(5, width=8)(torch.randn(2, 5, 32, 32)).shape == (2, 1, 2, 2)


def test_generator_input_skip_reaches_the_output_layer_at_full_resolution():
    torch.manual_seed(0)
    g = ResnetGenerator(1, 1, width=8, blocks=1, input_skip=True)
    assert g.out[1].in_channels == 8 + 1
    x = torch.zeros(1, 1, 32, 32, requires_grad=True)
    g(x)[0, 0, 16, 16].backward()
    # through the skip, the output pixel depends on its own 7x7 input neighbourhood at full resolution
    assert x.grad[0, 0, 16, 16] != 0 and bool((x.grad[0, 0, 13:20, 13:20] != 0).all())
    torch.manual_seed(0)
    plain = ResnetGenerator(1, 1, width=8, blocks=1)
    assert plain.out[1].in_channels == 8


def test_generator_residual_and_outer_kernel():
    torch.manual_seed(0)
    g = ResnetGenerator(1, 1, width=8, blocks=1, residual=True, outer_kernel=3)
    assert g.net[1].kernel_size == (3, 3) and g.out[1].kernel_size == (3, 3)
    torch.nn.init.zeros_(g.out[1].weight)
    torch.nn.init.zeros_(g.out[1].bias)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(g(x), x)           # a residual generator with a zero last layer is the identity
    with pytest.raises(ValueError, match="odd kernel size, not 4"):
        ResnetGenerator(1, 1, width=8, outer_kernel=4)
    with pytest.raises(ValueError, match="same channels, not 1 to 3"):
        ResnetGenerator(1, 3, width=8, residual=True)


def test_residual_block_is_the_identity_with_a_zero_last_convolution():
    block = ResidualBlock(4)
    torch.nn.init.zeros_(block.body[5].weight)
    torch.nn.init.zeros_(block.body[5].bias)
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(block(x), x)  # instance norm of a zero map is zero


def test_gan_adam_has_the_gan_betas():
    param = torch.nn.Parameter(torch.zeros(3))
    (group,) = gan_adam([param], 2e-4).param_groups
    assert group["betas"] == (0.5, 0.999) and group["lr"] == 2e-4 and group["weight_decay"] == 0
    assert len(group["params"]) == 1 and group["params"][0] is param


def test_gan_losses():
    ones, zeros = torch.ones(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    assert gan_loss(ones, real=True) == 0 and gan_loss(ones, real=False) == 1
    assert gan_loss(zeros, real=True, kind="vanilla").item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="Unknown GAN loss 'wgan'"):
        gan_loss(ones, True, kind="wgan")


def test_ema_teacher_is_an_exponential_average():
    student = torch.nn.Linear(3, 2)
    teacher = EMATeacher(student, decay=0.9)
    before = teacher.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student)
    assert torch.allclose(teacher.model.weight, 0.9 * before + 0.1 * student.weight)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.update(student, step=0)  # ramped decay min(0.9, 1 - 1/1) = 0: copies the student
    assert torch.equal(teacher.model.weight, student.weight)


def test_entropy_map_bounds():
    uniform = entropy_map(torch.zeros(1, 4, 2, 2)).sum(1)
    assert torch.allclose(uniform, torch.ones(1, 2, 2))
    certain = torch.full((1, 4, 2, 2), -100.0)
    certain[:, 0] = 100.0
    assert entropy_map(certain).sum() < 1e-6


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5)) and sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(50, 10) == 1.0 and sigmoid_rampup(3, 0) == 1.0


def test_image_pool_is_seeded_and_bounded():
    def run():
        pool = ImagePool(size=4, seed=0)
        return [pool.query(torch.full((2, 1, 2, 2), float(i))) for i in range(6)]

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(a[0], torch.zeros(2, 1, 2, 2)) and torch.equal(a[1], torch.ones(2, 1, 2, 2))
    assert ImagePool(size=0).query(torch.ones(1)) is not None


def test_fda_swap():
    swap = method_module("fda").low_frequency_swap
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g) * 3 + 1
    assert torch.allclose(swap(s, t, 0.0), s, atol=1e-5)  # nothing swapped
    mixed = swap(s, t, 0.1)  # b = 1: the 3x3 centre holds the DC term, so |mean| becomes the target's
    assert torch.allclose(mixed.mean(dim=(-2, -1)).abs(), t.mean(dim=(-2, -1)).abs(), atol=1e-5)
    amp = lambda x: torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)).abs()  # noqa: E731
    assert torch.allclose(amp(mixed)[..., 7:10, 7:10], amp(t)[..., 7:10, 7:10], atol=1e-3)
    assert torch.allclose(amp(mixed)[..., :4, :4], amp(s)[..., :4, :4], atol=1e-3)
