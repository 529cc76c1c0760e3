"""The two BYOL views, made for a whole batch at once on whatever device holds it.

BYOL (arXiv 2006.07733, appendix B) draws, for every image and every view independently:
random resized crop (area [0.08, 1], aspect [3/4, 4/3]), horizontal flip (p=0.5), colour
jitter (p=0.8; brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, in random order),
grayscale (p=0.2), Gaussian blur (p=1.0 / 0.1, sigma in [0.1, 2]) and solarization
(p=0.0 / 0.2). The last two are the asymmetric ones; :func:`byol_views` makes both specs.

``torchvision.transforms.v2`` on a batch draws one set of parameters for the whole batch,
which is wrong for BYOL, so every parameter here is a tensor with one entry per sample and
the ops are written as batched tensor maths (one ``grid_sample`` does crop+resize+flip).
The colour ops follow torchvision's per-image ones (a test holds them to it); where that
differs from the paper's reference code, :func:`_jitter` says how and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from byol_core.inputs import normalize
from byol_core.schema.pretrain import AugmentConfig

SMALL_IMAGE_PX = 32  # at or below this size blur is off unless forced (solo-learn's CIFAR recipe)
_CROP_TRIES = 10  # like torchvision's RandomResizedCrop, before falling back to a centre crop
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class ViewSpec:
    """The distribution one view is drawn from. Probabilities are per sample."""

    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    flip_p: float
    jitter_p: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale_p: float
    blur_p: float
    blur_sigma: tuple[float, float]
    solarize_p: float


def byol_views(cfg: AugmentConfig, image_size: int) -> tuple[ViewSpec, ViewSpec]:
    """View 1 and view 2 of the paper: shared settings, asymmetric blur and solarize."""
    blur_on = cfg.blur == "on" or (cfg.blur == "auto" and image_size > SMALL_IMAGE_PX)
    shared = ViewSpec(
        crop_scale=cfg.crop_scale, crop_ratio=cfg.crop_ratio, flip_p=cfg.flip_p,
        jitter_p=cfg.jitter_p, brightness=cfg.brightness, contrast=cfg.contrast,
        saturation=cfg.saturation, hue=cfg.hue, grayscale_p=cfg.grayscale_p,
        blur_p=0.0, blur_sigma=cfg.blur_sigma, solarize_p=0.0,
    )
    view1 = replace(shared, blur_p=cfg.blur_p[0] if blur_on else 0.0, solarize_p=cfg.solarize_p[0])
    view2 = replace(shared, blur_p=cfg.blur_p[1] if blur_on else 0.0, solarize_p=cfg.solarize_p[1])
    return view1, view2


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def _coin(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


@dataclass(frozen=True)
class ViewParams:
    """One draw of every random parameter, one entry per sample (B = batch size)."""

    box: torch.Tensor  # (B, 4) crop centre x, y and size w, h as fractions of the image
    flip: torch.Tensor  # (B,) bool
    jitter_factors: torch.Tensor  # (B, 4) brightness, contrast, saturation, hue; identity if not jittered
    jitter_order: torch.Tensor  # (B, 4) permutation of the four jitter ops; (B, 2) on 1 channel
    grayscale: torch.Tensor  # (B,) bool
    blur_sigma: torch.Tensor  # (B,) sigma, 0 where no blur
    solarize: torch.Tensor  # (B,) bool
    any_blur: bool  # False when the spec never blurs: the blur kernels are skipped altogether

    def part(self, start: int, stop: int) -> ViewParams:
        """The draws of samples ``start:stop``: a distributed rank applies its share of the
        global batch's draws, so each sample gets what it would get in one process."""
        return ViewParams(*(getattr(self, name)[start:stop] for name in
                            ("box", "flip", "jitter_factors", "jitter_order", "grayscale", "blur_sigma",
                             "solarize")), self.any_blur)


def _draw_boxes(n: int, height: int, width: int, spec: ViewSpec, gen, device) -> torch.Tensor:
    """RandomResizedCrop's sampling, vectorised: try ``_CROP_TRIES`` boxes per sample, keep
    the first that fits, else a centre crop with the ratio clamped to the allowed range."""
    area = height * width
    scale = _uniform(n * _CROP_TRIES, *spec.crop_scale, gen, device).view(n, _CROP_TRIES) * area
    log_ratio = _uniform(n * _CROP_TRIES, math.log(spec.crop_ratio[0]), math.log(spec.crop_ratio[1]),
                         gen, device).view(n, _CROP_TRIES)
    ratio = log_ratio.exp()
    w = (scale * ratio).sqrt().round()
    h = (scale / ratio).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full_like(fits[:, 0], -1, dtype=torch.long))
    pick = first.clamp(min=0).unsqueeze(1)
    w, h = w.gather(1, pick).squeeze(1), h.gather(1, pick).squeeze(1)
    # Fallback (torchvision's): the whole image, cropped to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < spec.crop_ratio[0]:
        fb_w, fb_h = float(width), round(width / spec.crop_ratio[0])
    elif in_ratio > spec.crop_ratio[1]:
        fb_w, fb_h = round(height * spec.crop_ratio[1]), float(height)
    else:
        fb_w, fb_h = float(width), float(height)
    ok = first >= 0
    w = torch.where(ok, w, torch.full_like(w, fb_w))
    h = torch.where(ok, h, torch.full_like(h, fb_h))
    x0 = torch.rand(n, generator=gen, device=device) * (width - w + 1).floor()
    y0 = torch.rand(n, generator=gen, device=device) * (height - h + 1).floor()
    x0 = torch.where(ok, x0.floor(), ((width - w) / 2).floor())
    y0 = torch.where(ok, y0.floor(), ((height - h) / 2).floor())
    return torch.stack([(x0 + w / 2) / width, (y0 + h / 2) / height, w / width, h / height], dim=1)


def draw_params(n: int, channels: int, height: int, width: int, spec: ViewSpec,
                gen: torch.Generator) -> ViewParams:
    """Draw every parameter of one view for ``n`` samples from ``gen`` (on ``gen.device``).

    On 1-channel images only brightness and contrast are jittered (and ordered)."""
    device = gen.device
    box = _draw_boxes(n, height, width, spec, gen, device)
    flip = _coin(n, spec.flip_p, gen, device)
    jitter = _coin(n, spec.jitter_p, gen, device)
    factors = torch.stack([
        _uniform(n, max(0.0, 1 - spec.brightness), 1 + spec.brightness, gen, device),
        _uniform(n, max(0.0, 1 - spec.contrast), 1 + spec.contrast, gen, device),
        _uniform(n, max(0.0, 1 - spec.saturation), 1 + spec.saturation, gen, device),
        _uniform(n, -spec.hue, spec.hue, gen, device),
    ], dim=1)
    # (1, 1, 1, 0) made on the device: writing a Python number into it would copy from the
    # host, a sync of the stream (and not allowed in a CUDA graph's capture).
    identity = (torch.arange(4, device=device) < 3).float()
    factors = torch.where(jitter.unsqueeze(1), factors, identity)
    order = torch.rand(n, 4 if channels == 3 else 2, generator=gen, device=device).argsort(dim=1)
    grayscale = _coin(n, spec.grayscale_p, gen, device)
    blur = _coin(n, spec.blur_p, gen, device)
    sigma = _uniform(n, *spec.blur_sigma, gen, device) * blur
    solarize = _coin(n, spec.solarize_p, gen, device)
    return ViewParams(box, flip, factors, order, grayscale, sigma, solarize, spec.blur_p > 0)


def _crop_flip(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each sample's box, resize it to ``size`` and mirror it where ``flip``: one grid_sample."""
    n = x.shape[0]
    cx, cy, w, h = box.unbind(1)
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` (B,) turns, via HSV as torchvision's adjust_hue."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, (g - b) / safe,
                      torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    hue = torch.remainder(hue + shift.view(-1, 1, 1), 1.0)
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    # HSV -> RGB, written as k-offsets so it stays branch-free.
    k = torch.remainder(torch.stack([5.0 + hue * 6, 3.0 + hue * 6, 1.0 + hue * 6], 1), 6.0)
    weight = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return maxc.unsqueeze(1) - (maxc * sat).unsqueeze(1) * weight


def _jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue in each sample's own random order.

    The first three are blends ``f*x + (1-f)*target`` with target 0, the image's mean grey,
    or its per-pixel grey, so one blend per slot applies whichever op the sample drew there;
    an identity factor (1, or hue 0) leaves a sample exactly unchanged. Saturation and hue
    are skipped on 1-channel images, where they mean nothing.

    Brightness is multiplicative, ``x * f`` with f in [1 - b, 1 + b], as torchvision's
    ``adjust_brightness``. The paper's reference code (DeepMind's ``augmentations.py``)
    adds an offset instead, ``x + d`` with d in [-b, b]; its contrast also blends towards
    each channel's own mean, where torchvision (and this code) use the mean grey. Kept as
    torchvision has it: that is what the PyTorch BYOL implementations we compare with
    (solo-learn, lightly) train with, a test checks these ops against torchvision's one
    image at a time, and a scale keeps black black, so the dark background of images like
    Fashion-MNIST's is not lifted to a flat grey. Changing it would change every trained
    weight and every published figure.
    """
    color = x.shape[1] == 3
    for slot in range(order.shape[1]):
        op = order[:, slot]
        gray = _gray(x)
        target = torch.where((op == 0).view(-1, 1, 1, 1), torch.zeros_like(gray),
                             torch.where((op == 1).view(-1, 1, 1, 1), gray.mean((2, 3), keepdim=True), gray))
        blend = op <= 2
        f = torch.where(blend, factors.gather(1, op.clamp(max=2).unsqueeze(1)).squeeze(1), 1.0)
        f = f.view(-1, 1, 1, 1).to(x.dtype)
        x = (f * x + (1 - f) * target).clamp(0.0, 1.0)
        if color:
            hue_here = (op == 3) & (factors[:, 3] != 0)
            x = torch.where(hue_here.view(-1, 1, 1, 1), _shift_hue(x, factors[:, 3]), x)
    return x


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma; sigma 0 gives a delta kernel (identity).

    Kernel size is ~10% of the image side, odd (23 px at 224 px, as in the paper)."""
    n, c, height, width = x.shape
    radius = max(1, round(0.05 * max(height, width)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma)).unsqueeze(1)
    kernel = torch.exp(-0.5 * (offsets / safe) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    delta = (offsets == 0).to(x.dtype).expand_as(kernel)
    kernel = torch.where((sigma > 0).unsqueeze(1), kernel, delta)
    weight = kernel.repeat_interleave(c, dim=0)  # (n*c, k): one kernel per sample and channel
    flat = x.reshape(1, n * c, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), weight.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, height, width)


def apply_view(images: torch.Tensor, params: ViewParams, size: int,
               mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float32 (B, C, size, size) under one drawn view."""
    x = images.float().div_(255.0)
    x = _crop_flip(x, params.box, params.flip, size)
    x = _jitter(x, params.jitter_factors, params.jitter_order)
    if x.shape[1] == 3:
        x = torch.where(params.grayscale.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    if params.any_blur:
        x = _blur(x, params.blur_sigma)
    x = torch.where(params.solarize.view(-1, 1, 1, 1) & (x >= 0.5), 1.0 - x, x)
    return normalize(x, mean, std)


def make_view(images: torch.Tensor, spec: ViewSpec, size: int, mean: torch.Tensor, std: torch.Tensor,
              gen: torch.Generator, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Draw one view's parameters for every sample and apply them. Deterministic given ``gen``.

    ``shard`` = (rank, world): ``images`` is this rank's slice of a global batch ``world``
    times larger; the draws are made for the whole global batch (the same on every rank)
    and this rank applies its slice of them."""
    rank, world = shard
    n = images.shape[0]
    params = draw_params(n * world, *images.shape[1:], spec, gen)
    return apply_view(images, params if world == 1 else params.part(rank * n, (rank + 1) * n), size, mean, std)


@dataclass(frozen=True)
class Augmenter:
    """Makes both BYOL views of a batch. Holds what stays fixed for a run (the two view
    specs, the output size, the data's per-channel mean and std, this process's ``shard``
    = (rank, world) of the global batch) and the generator the draws come from. A training
    loop makes it once without a generator and gives each epoch its own (:meth:`reseeded`),
    so a resumed run draws what an uninterrupted one drew."""

    views: tuple[ViewSpec, ViewSpec]
    size: int
    mean: torch.Tensor  # (C,), on the images' device
    std: torch.Tensor
    gen: torch.Generator | None = None
    shard: tuple[int, int] = (0, 1)

    @classmethod
    def for_data(cls, cfg: AugmentConfig, size: int, mean: torch.Tensor, std: torch.Tensor,
                 gen: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> Augmenter:
        """The paper's two views (:func:`byol_views`) of ``size`` px images."""
        return cls(byol_views(cfg, size), size, mean, std, gen, shard)

    def reseeded(self, gen: torch.Generator) -> Augmenter:
        """The same views, drawn from ``gen``."""
        return replace(self, gen=gen)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) -> view 1 and view 2, each normalised float32 (B, C, size, size).
        View 1's parameters are drawn before view 2's."""
        if self.gen is None:
            raise ValueError("Augmenter has no generator: use augmenter.reseeded(generator)")
        view1, view2 = (make_view(images, spec, self.size, self.mean, self.std, self.gen, self.shard)
                        for spec in self.views)
        return view1, view2
