"""Any ``keras.applications`` architecture as a tfssl backbone (``--backbone=keras:NAME``).

``build_application("MobileNetV3Small", ...)`` builds the architecture with
``include_top=False, weights=None`` (and ``include_preprocessing=False`` where the
architecture has it) on inputs of any size, replaces every Keras
``BatchNormalization`` by :class:`tfssl.models.batch_norm.BatchNormalization` with
the run's synchronisation and fused-kernel settings (so ``--batch_norm``, EMAN and
the multi-network method's frozen statistics act on it as on our ResNets), and wraps
it like :func:`tfssl.models.resnet.build_backbone`: the ``Normalize`` layer first,
``{"pooled", "feature_map"}`` float32 outputs.
"""

import inspect

import keras

from tfssl.errors import UserError
from tfssl.models.batch_norm import BatchNormalization
from tfssl.models.resnet import Normalize

PREFIX = "keras:"


def names():
    """The architectures ``keras.applications`` offers (classes and functions whose
    name starts with an upper-case letter)."""
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(getattr(keras.applications, n)))


def build_application(name, *, mean=(0.5,) * 3, std=(0.5,) * 3, sync_bn=False,
                      fused_bn=True, model_name="backbone"):
    """The backbone of ``keras.applications.<name>`` (see the module docstring).

    Raises:
      UserError: ``name`` is not an architecture of ``keras.applications``.
    """
    if name not in names():
        close = [n for n in names() if n.lower().startswith(name.lower()[:5])]
        raise UserError(f"--backbone={PREFIX}{name} is not in keras.applications; "
                        f"e.g. {', '.join(close or names()[:6])}")
    build = getattr(keras.applications, name)
    kwargs = {"include_top": False, "weights": None, "input_shape": (None, None, 3)}
    if "include_preprocessing" in inspect.signature(build).parameters:
        kwargs["include_preprocessing"] = False
    try:
        base = build(**kwargs)
    except ValueError as e:
        raise UserError(f"--backbone={PREFIX}{name} cannot be built on inputs of any "
                        f"size ({e}); choose another architecture") from None

    def ours(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = bool(sync_bn)
            return BatchNormalization(fused=fused_bn, **config)
        return layer.__class__.from_config(config)

    body = keras.models.clone_model(base, clone_function=ours)
    body.name = f"{name.lower()}"
    inputs = keras.Input(shape=(None, None, 3), dtype="float32", name="image")
    x = body(Normalize(mean, std, name="normalize")(inputs))
    x = keras.layers.Activation("linear", dtype="float32", name="to_float32")(x)
    pooled = keras.layers.GlobalAveragePooling2D(dtype="float32", name="avgpool")(x)
    return keras.Model(inputs, {"pooled": pooled, "feature_map": x}, name=model_name)
