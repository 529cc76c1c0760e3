import pytest
import torch
import torchvision.transforms.v2.functional as TF

from byol_core.train.augment import Augmenter, ViewParams, _jitter, apply_view, byol_views, draw_params, make_view
from byol_core.config import parse_params
from conftest import params_dict

AUG = parse_params(params_dict()).augment
ZERO, ONE = torch.zeros(3), torch.ones(3)


def _images(n=32, c=3, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=gen)


def _identity_params(n, channels=3, **changes) -> ViewParams:
    base = dict(
        box=torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(n, 1), flip=torch.zeros(n, dtype=torch.bool),
        jitter_factors=torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(n, 1),
        jitter_order=torch.arange(4 if channels == 3 else 2).repeat(n, 1),
        grayscale=torch.zeros(n, dtype=torch.bool), blur_sigma=torch.zeros(n),
        solarize=torch.zeros(n, dtype=torch.bool), any_blur=False)
    base.update(changes)
    return ViewParams(**base)


def test_view_specs_follow_the_paper_and_the_small_image_rule():
    small1, small2 = byol_views(AUG, 28)
    assert (small1.blur_p, small2.blur_p) == (0.0, 0.0)  # <= 32 px: no blur
    assert (small1.solarize_p, small2.solarize_p) == (0.0, 0.2)
    big1, big2 = byol_views(AUG, 96)
    assert (big1.blur_p, big2.blur_p) == (1.0, 0.1)
    forced = byol_views(AUG.model_copy(update={"blur": "on"}), 28)
    assert forced[0].blur_p == 1.0


@pytest.mark.parametrize("channels, size", [(3, 32), (1, 28), (3, 64)])
def test_output_shape_dtype_and_range(channels, size):
    images = _images(16, channels, size)
    view1, view2 = byol_views(AUG.model_copy(update={"blur": "on"}), size)
    gen = torch.Generator().manual_seed(0)
    for spec in (view1, view2):
        out = make_view(images, spec, 24, torch.zeros(channels), torch.ones(channels), gen)
        assert out.shape == (16, channels, 24, 24)
        assert out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_every_parameter_is_drawn_per_sample():
    view1, _ = byol_views(AUG.model_copy(update={"blur": "on"}), 64)
    params = draw_params(512, 3, 64, 64, view1, torch.Generator().manual_seed(0))
    assert len(torch.unique(params.box, dim=0)) > 400
    assert 0.4 < params.flip.float().mean() < 0.6
    jittered = (params.jitter_factors != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)
    assert 0.7 < jittered.float().mean() < 0.9
    assert len(torch.unique(params.jitter_factors[jittered, 0])) == int(jittered.sum())
    assert len(torch.unique(params.jitter_order, dim=0)) > 12  # many of the 24 orders occur
    assert 0.1 < params.grayscale.float().mean() < 0.3
    assert len(torch.unique(params.blur_sigma)) == 512  # blur p=1 on view 1, each sigma its own
    assert params.blur_sigma.min() >= 0.1 and params.blur_sigma.max() <= 2.0


def test_crop_boxes_respect_area_and_aspect_ranges():
    view1, _ = byol_views(AUG, 32)
    box = draw_params(4096, 3, 32, 32, view1, torch.Generator().manual_seed(0)).box
    area = box[:, 2] * box[:, 3]
    ratio = box[:, 2] / box[:, 3]
    # Integer pixel sizes round the continuous draw, hence the small slack.
    assert area.min() >= 0.08 * 0.7 and area.max() <= 1.0
    assert ratio.min() >= 0.75 * 0.8 and ratio.max() <= 1.3334 / 0.8
    assert ((box[:, :2] - box[:, 2:] / 2) >= -1e-6).all() and ((box[:, :2] + box[:, 2:] / 2) <= 1 + 1e-6).all()


def test_views_differ_per_sample_and_are_deterministic_under_a_seed():
    images = _images()
    view1, view2 = byol_views(AUG, 32)

    def both(seed):
        gen = torch.Generator().manual_seed(seed)
        return (make_view(images, view1, 32, ZERO, ONE, gen), make_view(images, view2, 32, ZERO, ONE, gen))

    a1, a2 = both(7)
    b1, b2 = both(7)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    per_sample_gap = (a1 - a2).abs().flatten(1).amax(1)
    assert (per_sample_gap > 0.05).all()
    c1, _ = both(8)
    assert not torch.equal(a1, c1)


def test_identity_parameters_return_the_image():
    images = _images(4)
    out = apply_view(images, _identity_params(4), 32, ZERO, ONE)
    torch.testing.assert_close(out, images.float() / 255, rtol=0, atol=1e-5)


def test_flip_mirrors_and_solarize_inverts_bright_pixels():
    images = _images(4)
    x = images.float() / 255
    flipped = apply_view(images, _identity_params(4, flip=torch.ones(4, dtype=torch.bool)), 32, ZERO, ONE)
    torch.testing.assert_close(flipped, x.flip(3), rtol=0, atol=1e-5)
    solar = apply_view(images, _identity_params(4, solarize=torch.ones(4, dtype=torch.bool)), 32, ZERO, ONE)
    torch.testing.assert_close(solar, torch.where(x >= 0.5, 1 - x, x), rtol=0, atol=1e-5)


def test_per_sample_blur_smooths_only_where_drawn():
    images = _images(4, size=64)
    sigma = torch.tensor([0.0, 2.0, 0.0, 1.0])
    out = apply_view(images, _identity_params(4, blur_sigma=sigma, any_blur=True), 64, ZERO, ONE)
    x = images.float() / 255
    torch.testing.assert_close(out[[0, 2]], x[[0, 2]], rtol=0, atol=1e-5)  # grid_sample rounding only
    assert out[1].std() < 0.5 * x[1].std()
    assert out[1].std() < out[3].std()
    torch.testing.assert_close(out[1].mean(), x[1].mean(), rtol=0, atol=0.01)


def test_batched_jitter_matches_torchvision_per_sample():
    images = _images(12)
    x = images.float() / 255
    view1, _ = byol_views(AUG.model_copy(update={"jitter_p": 1.0}), 32)
    params = draw_params(12, 3, 32, 32, view1, torch.Generator().manual_seed(3))
    ours = _jitter(x, params.jitter_factors, params.jitter_order)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(12):
        ref = x[i]
        for op in params.jitter_order[i].tolist():
            ref = ops[op](ref, float(params.jitter_factors[i, op]))
        torch.testing.assert_close(ours[i], ref, rtol=0, atol=5e-5)


def test_single_channel_skips_colour_ops():
    images = _images(64, c=1, size=28)
    view1, _ = byol_views(AUG.model_copy(update={"grayscale_p": 1.0, "jitter_p": 0.0}), 28)
    params = draw_params(64, 1, 28, 28, view1, torch.Generator().manual_seed(0))
    assert params.jitter_order.shape == (64, 2)  # only brightness and contrast to order
    no_crop = ViewParams(**{**params.__dict__, "box": _identity_params(64).box,
                            "flip": torch.zeros(64, dtype=torch.bool)})
    out = apply_view(images, no_crop, 28, torch.zeros(1), torch.ones(1))
    torch.testing.assert_close(out, images.float() / 255, rtol=0, atol=1e-5)  # grayscale p=1 did nothing


def test_augmenter_draws_view_1_then_view_2_from_its_generator():
    images = _images(8)
    view1, view2 = byol_views(AUG, 32)
    gen = torch.Generator().manual_seed(4)
    expected = (make_view(images, view1, 32, ZERO, ONE, gen), make_view(images, view2, 32, ZERO, ONE, gen))
    template = Augmenter.for_data(AUG, 32, ZERO, ONE)
    with pytest.raises(ValueError, match="no generator"):
        template(images)
    got = template.reseeded(torch.Generator().manual_seed(4))(images)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
