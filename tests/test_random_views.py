"""The batched stochastic view pass against per-image references (float64 where the formula is the
reference), the statistics of the drawn parameters, and the seeding that makes views reproducible."""
import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline import random_views as rv


def random_images(batch, height=12, width=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=generator)


def test_crop_resize_flip_equals_cropping_then_interpolating_each_image():
    images = random_images(5, 11, 13).permute(0, 3, 1, 2).float() / 255
    box = torch.tensor([[0, 0, 11, 13], [2, 3, 5, 7], [4, 1, 6, 6], [1, 5, 9, 4], [3, 3, 2, 3]], dtype=torch.float64)
    flip = torch.tensor([False, True, False, True, True])
    out = rv.crop_resize_flip(images, box, flip, 9)
    for b in range(5):
        top, left, h, w = (int(v) for v in box[b])
        reference = F.interpolate(images[b:b + 1, :, top:top + h, left:left + w], size=(9, 9), mode="bilinear",
                                  align_corners=False, antialias=False)
        if flip[b]:
            reference = reference.flip(3)
        assert torch.allclose(out[b:b + 1], reference, atol=1e-5), b


def reference_jitter(pixel_rgb, brightness, contrast_mean, contrast, saturation, hue):
    """One pixel through torchvision's four adjustments in the order brightness, contrast, saturation, hue."""
    def blend(a, b, ratio):
        return np.clip(ratio * a + (1 - ratio) * b, 0, 1)
    weights = np.array(rv.GRAY_WEIGHTS)
    x = blend(pixel_rgb, 0.0, brightness)
    x = blend(x, contrast_mean, contrast)
    x = blend(x, weights @ x, saturation)
    h, s, v = colorsys.rgb_to_hsv(*x)
    return np.array(colorsys.hsv_to_rgb((h + hue) % 1.0, s, v))


def test_colour_jitter_matches_the_per_pixel_float64_formulas():
    images = random_images(3, 5, 6, seed=1).permute(0, 3, 1, 2).double() / 255
    view = {"jitter": torch.tensor([True, True, False]),
            "order": torch.arange(4).repeat(3, 1),  # brightness, contrast, saturation, hue
            "brightness": torch.tensor([1.3, 0.7, 1.2]), "contrast": torch.tensor([0.8, 1.4, 1.0]),
            "saturation": torch.tensor([1.2, 0.6, 1.0]), "hue": torch.tensor([0.07, -0.1, 0.0])}
    out = rv.colour_jitter(images, {k: v.double() if v.is_floating_point() else v for k, v in view.items()})
    assert torch.equal(out[2], images[2])  # its coin came up tails
    for b in range(2):
        brightened = np.clip(images[b].numpy() * view["brightness"][b].item(), 0, 1)
        contrast_mean = (np.tensordot(np.array(rv.GRAY_WEIGHTS), brightened, axes=(0, 0))).mean()
        for i in range(5):
            for j in range(6):
                expected = reference_jitter(images[b, :, i, j].numpy(), view["brightness"][b].item(), contrast_mean,
                                            view["contrast"][b].item(), view["saturation"][b].item(),
                                            view["hue"][b].item())
                assert np.allclose(out[b, :, i, j].numpy(), expected, atol=1 / 255), (b, i, j)


def test_each_image_takes_the_adjustments_in_its_own_order():
    images = random_images(2, 4, 4, seed=2).permute(0, 3, 1, 2).float() / 255
    factors = {"brightness": torch.tensor([1.4, 1.4]), "contrast": torch.tensor([0.5, 0.5]),
               "saturation": torch.tensor([1.5, 1.5]), "hue": torch.tensor([0.2, 0.2])}
    order = torch.tensor([[3, 1, 0, 2], [0, 2, 3, 1]])
    out = rv.colour_jitter(images, {"jitter": torch.tensor([True, True]), "order": order, **factors})
    adjust = {"brightness": rv.adjust_brightness, "contrast": rv.adjust_contrast,
              "saturation": rv.adjust_saturation, "hue": rv.adjust_hue}
    for b in range(2):  # one image at a time, one adjustment at a time: the same numbers, bit for bit
        expected = images[b:b + 1]
        for index in order[b].tolist():
            name = rv.JITTER_OPERATIONS[index]
            expected = adjust[name](expected, factors[name][b:b + 1])
        assert torch.equal(out[b:b + 1], expected)
    skipped = rv.colour_jitter(images, {"jitter": torch.tensor([False, True]), "order": order, **factors})
    assert torch.equal(skipped[0], images[0]) and torch.equal(skipped[1], out[1])  # no jitter: untouched


def test_gaussian_blur_matches_a_float64_reflect_padded_convolution():
    images = random_images(2, 7, 8, seed=3).permute(0, 3, 1, 2).double() / 255
    sigma = torch.tensor([0.6, 1.7])
    out = rv.gaussian_blur(images, sigma, 5)
    for b in range(2):
        x = np.arange(5) - 2
        kernel = np.exp(-0.5 * (x / sigma[b].item()) ** 2)
        kernel /= kernel.sum()
        padded = np.pad(images[b].numpy(), ((0, 0), (2, 2), (2, 2)), mode="reflect")
        expected = np.zeros(images[b].shape)
        for di in range(5):
            for dj in range(5):
                expected += kernel[di] * kernel[dj] * padded[:, di:di + 7, dj:dj + 8]
        assert np.allclose(out[b].numpy(), expected, atol=1e-6)


def reference_crop_area_mean(spec, height, width, draws=20000, seed=9):
    """torchvision's RandomResizedCrop.get_params, transcribed one image at a time with numpy."""
    rng = np.random.default_rng(seed)
    areas = []
    for _ in range(draws):
        for _ in range(10):
            target = height * width * rng.uniform(*spec.crop_scale)
            ratio = np.exp(rng.uniform(np.log(spec.crop_ratio[0]), np.log(spec.crop_ratio[1])))
            w, h = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                areas.append(w * h / (height * width))
                break
        else:
            areas.append(1.0)
    return float(np.mean(areas))


def test_drawn_parameters_follow_their_distributions():
    spec = rv.ViewSpec()
    views = rv.draw((spec,), 4000, 32, 32, torch.Generator().manual_seed(4))
    (view,) = views
    top, left, h, w = view["box"].unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert abs(torch.log(w / h).mean().item()) < 0.02  # log-uniform ratio, symmetric around 1
    assert abs(area.mean().item() - reference_crop_area_mean(spec, 32, 32)) < 0.015
    for key, p in (("flip", 0.5), ("jitter", 0.8), ("grayscale", 0.2), ("blur", 0.0), ("solarize", 0.0)):
        assert abs(view[key].float().mean().item() - p) < 0.025, key
    assert view["brightness"].min() >= 0.6 and view["brightness"].max() <= 1.4
    assert abs(view["brightness"].mean().item() - 1.0) < 0.01 and abs(view["hue"].mean().item()) < 0.005
    assert {tuple(row) for row in view["order"].tolist()} == {tuple(p) for p in __import__("itertools").permutations(range(4))}


def test_ranks_draw_different_views_and_a_step_redraws_the_same():
    recipe = rv.get_recipe("simclr")
    first = rv.draw(recipe, 8, 32, 32, rv.view_generator(seed=1, rank=0, epoch=3, step=7))
    again = rv.draw(recipe, 8, 32, 32, rv.view_generator(seed=1, rank=0, epoch=3, step=7))
    other_rank = rv.draw(recipe, 8, 32, 32, rv.view_generator(seed=1, rank=1, epoch=3, step=7))
    assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
               for a, b in zip(first, again) for k in a)
    assert not torch.equal(first[0]["box"], other_rank[0]["box"])
    assert not torch.equal(first[0]["box"], first[1]["box"])  # the two views of an image differ


def test_render_lays_views_out_interleaved_normalised_and_channels_last():
    images = random_images(3, 8, 8, seed=5)
    still = rv.ViewSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    flipped = rv.ViewSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0, grayscale_p=1.0)
    views = rv.draw((still, flipped), 3, 8, 8, torch.Generator().manual_seed(6))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = rv.render(images, views, 8, mean, std, torch.float32, channels_last=True)
    assert out.shape == (6, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
    source = images.permute(0, 3, 1, 2).float() / 255
    normalise = lambda x: (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # noqa: E731
    assert torch.allclose(out[0::2], normalise(source), atol=1e-5)  # row b·2 + 0: view 0 of image b
    assert torch.allclose(out[1::2], normalise(rv.grayscale(source.flip(3)).expand(-1, 3, -1, -1)), atol=1e-5)


def test_solarisation_and_unknown_recipes():
    images = random_images(4, 6, 6, seed=7)
    spec = rv.ViewSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                       solarize_p=1.0)
    out = rv.render(images, rv.draw((spec,), 4, 6, 6, torch.Generator().manual_seed(8)), 6, (0, 0, 0), (1, 1, 1),
                    channels_last=False)
    source = images.permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(out, torch.where(source >= 0.5, 1 - source, source), atol=1e-6)
    with pytest.raises(ValueError, match="unknown view recipe 'simclr2'"):
        rv.get_recipe("simclr2")


def dali_operator_views(images, recipe, mean, std, batch):
    """One batch of `--dali-views operators` views from the dali loader (CPU pipeline) over `images`."""
    from pipeline.batch import LoaderSettings
    from pipeline.datasets import ImageSet
    from pipeline.loaders import build_loader

    split = ImageSet(images.numpy(), np.zeros(len(images), dtype=np.int64), 1, ["only"])
    expander = rv.RandomViewExpander(recipe, images.shape[1], mean, std, torch.float32, channels_last=True)
    settings = LoaderSettings(expander, torch.device("cpu"), batch, train=False, crop_padding=-1,
                              dali_views="operators", workers=1)
    loader = build_loader("dali", split, settings)
    loader.set_epoch(0)
    return next(iter(loader)).views


def test_dali_operator_views_are_interleaved_normalised_and_follow_the_recipe():
    images = random_images(5, 8, 8, seed=9)
    still = rv.ViewSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    gray_flipped_solarised = rv.ViewSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=1.0, jitter_p=0.0,
                                         grayscale_p=1.0, solarize_p=1.0)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = dali_operator_views(images, (still, gray_flipped_solarised), mean, std, 5)
    assert out.shape == (10, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
    source = images.permute(0, 3, 1, 2).float()
    normalise = lambda x: (x / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # noqa: E731
    assert torch.allclose(out[0::2], normalise(source), atol=1e-4)  # view 0 of image b at row b·2
    second = out[1::2] * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert (second.max(dim=1).values - second.min(dim=1).values).abs().max() < 2.5 / 255  # grey: R = G = B
    assert second.max() <= 128 / 255 + 1e-4  # solarised: nothing above mid-grey survives


def test_dali_operator_views_differ_between_views_and_images():
    images = random_images(6, 16, 16, seed=10)
    out = dali_operator_views(images, rv.get_recipe("simclr"), (0.5,) * 3, (0.25,) * 3, 6)
    assert out.shape == (12, 3, 16, 16) and torch.isfinite(out).all()
    assert (out[0::2] - out[1::2]).abs().flatten(1).amax(dim=1).min() > 0.05  # two different views of each
