"""View recipes as data: a method declares a tuple of ``ViewSpec`` and the pipeline
turns each example into that many views with ``make_views``.

A recipe function returns ``tuple[ViewSpec, ...]`` so recipes compose by
concatenation, e.g. ReCo's ``strong(s) * 2 + weak(s)`` or BYOL's
``byol_a(s) + byol_b(s)``. Override single numbers (every probability is a field) with
``dataclasses.replace(spec, blur_p=...)``, which re-runs the validation.

Numbers follow ``docs/METHODS.md`` ("Views"). Where that page leaves a number open the
recipe keeps the ``ViewSpec`` default (crop scale ``(0.2, 1)`` for every recipe,
including BYOL, whose paper uses ``(0.08, 1)``).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable, Sequence

import tensorflow as tf

from tfssl.data import augment
from tfssl.errors import UserError

# fold_in index of each op of a view; fixed so that a view is a pure function of
# (image, spec, seed) and skipping an op (p = 0) leaves the others' randomness alone.
_CROP, _FLIP, _JITTER, _GRAY, _BLUR, _SOLARIZE = range(6)


def _pair(name, value, n=2):
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n:
        raise UserError(f"ViewSpec.{name} must be {n} numbers, got {value!r}")
    return out


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """How to make one view (defaults: MoCo-v2's augmentation).

    Attributes:
        size: output side in pixels; the view is float32 ``[size, size, 3]``.
        crop_scale: ``(lo, hi)`` area fraction of the random resized crop,
            ``0 < lo <= hi <= 1``.
        crop_ratio: ``(lo, hi)`` bounds on the crop's ``w / h``, ``0 < lo <= hi``.
        flip_p: probability of a horizontal flip.
        jitter: colour-jitter strengths ``(brightness, contrast, saturation, hue)``,
            non-negative, hue ``<= 0.5``.
        jitter_p: probability of applying the colour jitter.
        gray_p: probability of converting to grayscale.
        blur_p: probability of a Gaussian blur (kernel ~10% of ``size``).
        blur_sigma: ``(lo, hi)`` range of the blur's sigma, ``0 < lo <= hi``.
        solarize_p: probability of solarizing (threshold 0.5).
    """

    size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral) \
                or self.size <= 0:
            raise UserError(f"ViewSpec.size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                    or not 0.0 <= value <= 1.0:
                raise UserError(f"ViewSpec.{name} is a probability in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        # Normalise sequences to tuples of floats: hashable, JSON-friendly, comparable.
        lo, hi = _pair("crop_scale", self.crop_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise UserError(f"ViewSpec.crop_scale needs 0 < lo <= hi <= 1, got {(lo, hi)}")
        object.__setattr__(self, "crop_scale", (lo, hi))
        lo, hi = _pair("crop_ratio", self.crop_ratio)
        if not 0.0 < lo <= hi:
            raise UserError(f"ViewSpec.crop_ratio needs 0 < lo <= hi, got {(lo, hi)}")
        object.__setattr__(self, "crop_ratio", (lo, hi))
        jitter = _pair("jitter", self.jitter, 4)
        if min(jitter) < 0.0 or jitter[3] > 0.5:
            raise UserError(f"ViewSpec.jitter needs strengths >= 0 and hue <= 0.5, got {jitter}")
        object.__setattr__(self, "jitter", jitter)
        lo, hi = _pair("blur_sigma", self.blur_sigma)
        if not 0.0 < lo <= hi:
            raise UserError(f"ViewSpec.blur_sigma needs 0 < lo <= hi, got {(lo, hi)}")
        object.__setattr__(self, "blur_sigma", (lo, hi))


def apply_view(image: tf.Tensor, spec: ViewSpec, seed: tf.Tensor) -> tf.Tensor:
    """Makes one view of one example.

    Order: to RGB float, random resized crop, flip, colour jitter, grayscale, blur,
    solarize; op ``k`` uses the seed ``fold_in(seed, k)``. Ops with probability 0 are
    left out of the graph.

    Args:
        image: uint8 ``[H, W, C]``, ``C`` in {1, 3} (2 and 4 accepted; see
            ``augment.to_float_rgb``).
        spec: the view's recipe.
        seed: int32/int64 ``[2]``.

    Returns:
        float32 ``[spec.size, spec.size, 3]`` in ``[0, 1]``.
    """
    seed = tf.convert_to_tensor(seed)
    x = augment.to_float_rgb(image)
    x = augment.random_resized_crop(x, augment.fold(seed, _CROP), spec.size,
                                    spec.crop_scale, spec.crop_ratio)
    return _after_crop(x, spec, seed)


def _after_crop(x, spec, seed):
    """The ops of :func:`apply_view` after the crop.

    Kept in step with :func:`sample_view_params` and
    :func:`tfssl.data.device_augment.photometric` (the batched device path).
    """
    if spec.flip_p > 0:
        x = augment.random_flip(x, augment.fold(seed, _FLIP), spec.flip_p)
    if spec.jitter_p > 0 and any(spec.jitter):
        x = augment.random_color_jitter(x, augment.fold(seed, _JITTER), spec.jitter,
                                        spec.jitter_p)
    if spec.gray_p > 0:
        x = augment.random_grayscale(x, augment.fold(seed, _GRAY), spec.gray_p)
    if spec.blur_p > 0:
        x = augment.random_gaussian_blur(x, augment.fold(seed, _BLUR), spec.blur_p,
                                         spec.blur_sigma)
    if spec.solarize_p > 0:
        x = augment.random_solarize(x, augment.fold(seed, _SOLARIZE), spec.solarize_p)
    return x


def sample_view_params(image_shape, spec: ViewSpec, seed: tf.Tensor) -> dict:
    """Every random parameter of one view, drawn as :func:`apply_view` draws it.

    The batched path (``--augment_on=device``) samples these on the host, where
    they cost a few dozen numbers per view, and applies them to a whole batch in
    the replica step (:mod:`tfssl.data.device_augment`).

    Args:
        image_shape: ``[H, W, ...]`` of the source image.
        spec: the view's recipe.
        seed: int32/int64 ``[2]``, the view's seed (as :func:`apply_view`'s).

    Returns:
        ``{"box": int32 [4], "flip": bool [], "jitter": bool [], "jitter_factors":
        float32 [4], "jitter_order": int32 [4], "gray": bool [], "blur": bool [],
        "blur_sigma": float32 [], "solarize": bool []}``; an op the spec leaves out
        (probability 0) gets ``False`` and is skipped on both paths.
    """
    seed = tf.convert_to_tensor(seed)
    off = tf.constant(False)
    jitter = augment.sample_jitter_params(augment.fold(seed, _JITTER), spec.jitter,
                                          spec.jitter_p)
    blur = augment.sample_blur_params(augment.fold(seed, _BLUR), spec.blur_p,
                                      spec.blur_sigma)
    use_jitter = spec.jitter_p > 0 and any(spec.jitter)
    return {
        "box": augment.sample_crop_box(augment.fold(seed, _CROP), image_shape,
                                       spec.crop_scale, spec.crop_ratio),
        "flip": augment.sample_apply(augment.fold(seed, _FLIP), spec.flip_p)
        if spec.flip_p > 0 else off,
        "jitter": jitter.apply if use_jitter else off,
        "jitter_factors": jitter.factors,
        "jitter_order": jitter.order,
        "gray": augment.sample_apply(augment.fold(seed, _GRAY), spec.gray_p)
        if spec.gray_p > 0 else off,
        "blur": blur.apply if spec.blur_p > 0 else off,
        "blur_sigma": blur.sigma,
        "solarize": augment.sample_apply(augment.fold(seed, _SOLARIZE), spec.solarize_p)
        if spec.solarize_p > 0 else off,
    }


def make_view_params(image: tf.Tensor, specs: Sequence[ViewSpec], seed: tf.Tensor,
                     crop: bool = False) -> dict:
    """The host half of ``--augment_on=device`` for one example.

    Args:
        image: uint8 ``[H, W, C]``.
        specs, seed: as :func:`make_views` (view ``i`` uses ``fold_in(seed, i)``).
        crop: also crop and resize each view here (sources whose images differ in
            size); otherwise the image itself goes to the device.

    Returns:
        ``{"params": tuple of sample_view_params dicts}`` with ``"image"`` (the
        uint8 image) or, with ``crop``, ``"crops"`` (float32 ``[size, size, 3]``
        per view, before the flip).
    """
    seed = tf.convert_to_tensor(seed)
    seeds = [augment.fold(seed, i) for i in range(len(specs))]
    params = tuple(sample_view_params(tf.shape(image), spec, s)
                   for spec, s in zip(specs, seeds))
    if not crop:
        return {"image": image, "params": params}
    x = augment.to_float_rgb(image)
    return {"crops": tuple(augment.resized_crop(x, p["box"], spec.size)
                           for p, spec in zip(params, specs)), "params": params}


def make_views(image: tf.Tensor, specs: Sequence[ViewSpec], seed: tf.Tensor) -> tuple:
    """Makes ``len(specs)`` views; view ``i`` uses ``fold_in(seed, i)``.

    Args:
        image: uint8 ``[H, W, C]``.
        specs: one ``ViewSpec`` per view.
        seed: int32/int64 ``[2]``, this example's seed.

    Returns:
        tuple of float32 ``[specs[i].size, specs[i].size, 3]``.
    """
    seed = tf.convert_to_tensor(seed)
    return tuple(apply_view(image, spec, augment.fold(seed, i)) for i, spec in enumerate(specs))


#: Pixels decoded around the views' crop window: one MCU of 4:2:0 JPEG (16 px), so
#: that chroma upsampling at the window's edge sees the same neighbours as a full
#: decode (without it some of the crop's border pixels differ; docs/BENCHMARKS.md).
JPEG_MARGIN = 16
#: A JPEG is decoded by window when the window is below this fraction of the image
#: (measured at 224 px, docs/BENCHMARKS.md: a window of most of the image decodes
#: no faster than the whole image, and the extra header read then costs time).
WINDOW_FRACTION = 0.6


def make_views_from_bytes(encoded: tf.Tensor, specs: Sequence[ViewSpec], seed: tf.Tensor,
                          channels: int = 3, for_device: bool = False):
    """:func:`make_views` of an encoded image, decoding only what the crops need.

    A JPEG is decoded with ``tf.io.decode_and_crop_jpeg`` over the smallest window
    holding every view's crop box (the boxes come from the image's shape, read from
    its header, and the same seeds as :func:`make_views`) plus ``JPEG_MARGIN``, when
    that window is below ``WINDOW_FRACTION`` of the image: the views are
    bit-identical to decoding the whole image first (tested). Other formats, and
    JPEGs whose window is most of the image, are decoded whole.

    Args:
        encoded: string scalar, the file's bytes (JPEG, PNG, GIF, BMP).
        specs, seed: as :func:`make_views`.
        channels: decoded channels (3: RGB; gray and palette images converted).
        for_device: return :func:`make_view_params` ``(crop=True)`` instead of the
            views: the crops and every view's parameters (``--augment_on=device``).
    """
    seed = tf.convert_to_tensor(seed)
    seeds = [augment.fold(seed, i) for i in range(len(specs))]

    def whole():
        image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
        image.set_shape([None, None, channels])
        if for_device:
            return make_view_params(image, specs, seed, crop=True)
        return make_views(image, specs, seed)

    def jpeg():
        shape = tf.image.extract_jpeg_shape(encoded)
        params = tuple(sample_view_params(shape, spec, s) for spec, s in zip(specs, seeds))
        boxes = tf.stack([p["box"] for p in params])
        top = tf.maximum(tf.reduce_min(boxes[:, 0]) - JPEG_MARGIN, 0)
        left = tf.maximum(tf.reduce_min(boxes[:, 1]) - JPEG_MARGIN, 0)
        bottom = tf.minimum(tf.reduce_max(boxes[:, 0] + boxes[:, 2]) + JPEG_MARGIN,
                            shape[0])
        right = tf.minimum(tf.reduce_max(boxes[:, 1] + boxes[:, 3]) + JPEG_MARGIN,
                           shape[1])

        def window():
            part = tf.io.decode_and_crop_jpeg(
                encoded, tf.stack([top, left, bottom - top, right - left]),
                channels=channels)
            x = augment.to_float_rgb(part)
            shift = tf.stack([top, left, 0, 0])
            crops = tuple(augment.resized_crop(x, boxes[i] - shift, spec.size)
                          for i, spec in enumerate(specs))
            if for_device:
                return {"crops": crops, "params": params}
            return tuple(_after_crop(c, spec, s) for c, spec, s in zip(crops, specs, seeds))

        area = tf.cast((bottom - top) * (right - left), tf.float32)
        small = area < WINDOW_FRACTION * tf.cast(shape[0] * shape[1], tf.float32)
        return tf.cond(small, window, whole)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, whole)


# ------------------------------------------------------------------------ recipes


def _blur_on(size: int) -> bool:
    # docs/METHODS.md: blur is off by default at <= 32 px, our choice (a 3-tap kernel on
    # a 32 px view mostly destroys the little detail there is); the ReSSL paper keeps
    # p 0.5 there.
    return size > 32


def strong(size: int) -> tuple[ViewSpec, ...]:
    """MoCo-v2: crop (0.2, 1), flip, jitter (0.4, 0.4, 0.4, 0.1) p 0.8, gray 0.2,
    blur p 0.5 (0 at <= 32 px)."""
    return (ViewSpec(size=size, blur_p=0.5 if _blur_on(size) else 0.0),)


def weak(size: int) -> tuple[ViewSpec, ...]:
    """ReSSL's teacher view: crop (0.2, 1) + flip only."""
    return (ViewSpec(size=size, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0),)


def byol_a(size: int) -> tuple[ViewSpec, ...]:
    """BYOL's first view: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, gray 0.2, blur p 1.0
    (0 at <= 32 px), no solarize."""
    return (ViewSpec(size=size, jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2,
                     blur_p=1.0 if _blur_on(size) else 0.0, solarize_p=0.0),)


def byol_b(size: int) -> tuple[ViewSpec, ...]:
    """BYOL's second view: as ``byol_a`` with blur p 0.1 (0 at <= 32 px), solarize 0.2."""
    return (dataclasses.replace(byol_a(size)[0], blur_p=0.1 if _blur_on(size) else 0.0,
                                solarize_p=0.2),)


#: Single-view recipes by name; each maps an image size to a 1-tuple of ViewSpec.
RECIPES: dict[str, Callable[[int], tuple[ViewSpec, ...]]] = {
    "strong": strong,
    "weak": weak,
    "byol_a": byol_a,
    "byol_b": byol_b,
}


def get_recipe(name: str, size: int) -> tuple[ViewSpec, ...]:
    """``RECIPES[name](size)``; raises ``UserError`` listing the known names."""
    if name not in RECIPES:
        raise UserError(f"unknown view recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name](size)


def multi_crop(global_size: int, local_size: int, n_global: int, n_local: int,
               base: str | Sequence[str] = "strong", global_scale=(0.2, 1.0),
               local_scale=(0.05, 0.2)) -> tuple[ViewSpec, ...]:
    """``n_global`` crops at ``global_size`` then ``n_local`` at ``local_size``.

    Each crop is the ``base`` recipe at its own size (so blur follows the size rule)
    with its crop scale replaced.

    Args:
        global_size, local_size: view sides.
        n_global, n_local: counts, ``>= 0`` with at least one view.
        base: a ``RECIPES`` name, or a sequence of names used cyclically within each
            group (``("byol_a", "byol_b")`` gives BYOL's asymmetric pair).
        global_scale, local_scale: crop-scale ranges.

    Returns:
        ``n_global + n_local`` specs, global first.
    """
    names = (base,) if isinstance(base, str) else tuple(base)
    if not names:
        raise UserError("multi_crop base must name at least one recipe")
    if n_global < 0 or n_local < 0 or n_global + n_local == 0:
        raise UserError(f"multi_crop needs n_global, n_local >= 0 and at least one view, "
                        f"got {n_global}, {n_local}")
    specs = []
    for count, size, scale in ((n_global, global_size, global_scale),
                               (n_local, local_size, local_scale)):
        for i in range(count):
            spec = get_recipe(names[i % len(names)], size)[0]
            specs.append(dataclasses.replace(spec, crop_scale=tuple(scale)))
    return tuple(specs)


#: ReSSL's ImageNet multi-crop: (size, min scale, max scale) per crop.
RESSL_IMAGENET_CROPS = ((224, 0.14, 1.0), (192, 0.117, 0.86), (160, 0.095, 0.715),
                        (128, 0.073, 0.571), (96, 0.05, 0.429))


def ressl_imagenet_multicrop() -> tuple[ViewSpec, ...]:
    """ReSSL's 5-crop preset, strong augmentation, sizes 224/192/160/128/96."""
    return tuple(dataclasses.replace(strong(size)[0], crop_scale=(lo, hi))
                 for size, lo, hi in RESSL_IMAGENET_CROPS)
