"""Tests for unet.py: shapes, zero init, conditioning wiring, embedding values, layouts, dtypes."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unet import PRESETS, UNet, build_unet, count_parameters, timestep_embedding


def perturbed(model: UNet, seed: int = 0, scale: float = 0.05) -> UNet:
    """Add noise to every parameter, so the zero-initialised layers stop hiding the rest."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return model


def inputs(batch: int, channels: int, size: int, num_classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, size, size, generator=generator)
    t = torch.rand(batch, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return x, t, labels


@pytest.fixture(scope="module")
def tiny() -> UNet:
    torch.manual_seed(0)
    return perturbed(build_unet("tiny", 8, 3, 10)).eval()


@pytest.mark.parametrize("preset,size,channels",
                         [("tiny", 8, 3), ("tiny", 12, 1), ("small", 8, 3), ("small", 12, 1)])
def test_output_shape_equals_input_shape(preset, size, channels):
    model = build_unet(preset, size, channels, num_classes=5)
    x, t, labels = inputs(1, channels, size, 5)
    with torch.no_grad():
        assert model(x, t, labels).shape == x.shape


def test_fresh_network_outputs_exactly_zero():
    torch.manual_seed(0)
    model = build_unet("tiny", 8, 3, 10)
    with torch.no_grad():
        assert torch.equal(model(*inputs(3, 3, 8, 10)), torch.zeros(3, 3, 8, 8))


def test_same_seed_gives_same_weights():
    torch.manual_seed(1)
    first = build_unet("tiny", 16, 3, 10).state_dict()
    torch.manual_seed(1)
    second = build_unet("tiny", 16, 3, 10).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_output_depends_on_time_and_label(tiny):
    x, t, _ = inputs(2, 3, 8, 10)
    labels = torch.tensor([3, 3])
    with torch.no_grad():
        reference = tiny(x, t, labels)
        assert not torch.allclose(reference, tiny(x, t + 0.1, labels))
        assert not torch.allclose(reference, tiny(x, t, torch.tensor([4, 4])))
        null = tiny(x, t, labels, torch.tensor([True, True]))  # the unconditional field
        assert torch.isfinite(null).all() and not torch.allclose(reference, null)
        # a null row ignores its id: any id (even out of range) gives the same field
        assert torch.equal(null, tiny(x, t, torch.tensor([7, 99]), torch.tensor([True, True])))


def test_class_id_out_of_range_is_an_index_error(tiny):
    x, t, _ = inputs(1, 3, 8, 10)
    with pytest.raises(IndexError):
        tiny(x, t, torch.tensor([10]))  # ids are 0..9; "null" is the mask, not an id


def test_vector_conditions_through_the_mlp_encoder():
    torch.manual_seed(0)
    model = perturbed(build_unet("tiny", 8, 3, cond_dim=7)).eval()
    x, t, _ = inputs(2, 3, 8, 10)
    cond = torch.rand(2, 7)
    with torch.no_grad():
        reference = model(x, t, cond)
        assert not torch.allclose(reference, model(x, t, cond + 0.5))  # the vector matters
        null = torch.tensor([True, True])
        assert torch.equal(model(x, t, cond, null), model(x, t, cond + 0.5, null))  # unless the row is null
    assert not hasattr(model.cond_encoder, "table")


def test_samples_in_a_batch_are_independent(tiny):
    # Group norm is per sample, so one image's velocity does not depend on its batch mates.
    x, t, labels = inputs(4, 3, 8, 10)
    with torch.no_grad():
        assert torch.allclose(tiny(x, t, labels)[:1], tiny(x[:1], t[:1], labels[:1]), atol=1e-5)


def test_sinusoidal_embedding_by_hand():
    dim, half = 8, 4
    embedding = timestep_embedding(torch.tensor([0.0, 0.5]), dim)
    assert embedding.shape == (2, dim)
    assert torch.equal(embedding[0, :half], torch.ones(half))  # cos(0)
    assert torch.equal(embedding[0, half:], torch.zeros(half))  # sin(0)
    # t = 0.5 is scaled to 500; frequency i is 10000^(-i/4).
    for i in range(half):
        angle = 500.0 * 10000.0 ** (-i / half)
        assert embedding[1, i].item() == pytest.approx(math.cos(angle), abs=1e-4)
        assert embedding[1, half + i].item() == pytest.approx(math.sin(angle), abs=1e-4)


def test_channels_last_matches_contiguous(tiny):
    x, t, labels = inputs(2, 3, 8, 10)
    with torch.no_grad():
        contiguous = tiny(x, t, labels)
        channels_last_model = copy.deepcopy(tiny).to(memory_format=torch.channels_last)
        channels_last = channels_last_model(x.to(memory_format=torch.channels_last), t, labels)
    assert torch.allclose(contiguous, channels_last, atol=1e-5)


def test_bf16_autocast_is_finite_and_close_to_fp32(tiny):
    x, t, labels = inputs(2, 3, 8, 10)
    with torch.no_grad():
        full = tiny(x, t, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = tiny(x, t, labels)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).abs().max() < 0.05 * full.abs().max()


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = perturbed(build_unet("tiny", 8, 3, 10)).train()
    x, t, labels = inputs(4, 3, 8, 10)
    null = torch.tensor([False, True, False, False])
    model(x, t, labels, null).pow(2).mean().backward()
    for name, parameter in model.named_parameters():
        if name == "cond_encoder.table.weight":
            # Only the rows of the (non-null) labels in the batch get a gradient.
            assert parameter.grad[labels[~null]].abs().sum(dim=1).gt(0).all(), name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_parameter_counts():
    # Built on the meta device: shapes only, no memory (imagenet64 would take 1.1 GB).
    with torch.device("meta"):
        tiny, small = build_unet("tiny", 32, 3, 10), build_unet("small", 32, 3, 10)
        imagenet64 = build_unet("imagenet64", 64, 3, 1000)
    assert count_parameters(tiny) < 1_000_000
    assert 2_000_000 < count_parameters(small) < 10_000_000
    # ADM's ImageNet-64 model is about 296M; ours is ~19M smaller (one conv instead of a
    # residual block for each down/upsampling step).
    assert count_parameters(imagenet64) == 277_189_827


def test_unknown_preset_is_a_value_error():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; choose one of: tiny, small, imagenet64"):
        build_unet("huge", 32, 3, 10)


def test_image_size_must_divide_by_the_downsampling():
    with pytest.raises(ValueError, match="divisible by 4"):
        build_unet("small", 30, 3, 10)  # three levels: 30 -> 15 -> 7.5
    with pytest.raises(ValueError, match="divisible by 8"):
        build_unet("imagenet64", 36, 3, 10)


def test_bad_attention_settings_are_value_errors():
    with pytest.raises(ValueError, match="num_head_channels"):
        UNet(16, 3, 10, **{**PRESETS["tiny"], "num_head_channels": 48})
    with pytest.raises(ValueError, match="attention_downsample"):
        UNet(16, 3, 10, **{**PRESETS["tiny"], "attention_downsample": (8,)})


def test_compiles_without_graph_breaks():
    # fullgraph=True fails on any data-dependent Python control flow or host sync.
    # The "eager" backend checks the trace only (no code generation), to stay fast.
    model = perturbed(UNet(8, 1, 2, base_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                           attention_downsample=(2,), num_head_channels=32)).eval()
    x, t, labels = inputs(2, 1, 8, 2)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x, t, labels), model(x, t, labels))
