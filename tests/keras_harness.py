"""Shared test harness: every Keras object round-trips (STYLE point 7).

Use from any test module::

    from tests.keras_harness import assert_config_complete, assert_roundtrip

    assert_config_complete(MyLayer, {"units": 3, "scale": 0.5})
    assert_roundtrip(my_model_or_layer, inputs)

``assert_roundtrip`` works for functional/subclassed models and for single layers
(a layer is wrapped in a functional model for the ``.keras`` file part). Inputs may
be one array or a (nested) list/tuple/dict of arrays; outputs may be nested too
(e.g. the backbone's ``{"pooled", "feature_map"}`` dict). Everything is compared in
inference mode (``training=False``) so BN uses its moving statistics.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile

import keras
import numpy as np

ATOL = 1e-6


def _flat_outputs(obj, inputs) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(t)
            for t in keras.tree.flatten(obj(inputs, training=False))]


def _assert_outputs_equal(expected, actual, what: str, atol: float) -> None:
    assert len(expected) == len(actual), f"{what}: {len(actual)} outputs, expected {len(expected)}"
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert e.shape == a.shape, f"{what}: output {i} shape {a.shape} != {e.shape}"
        np.testing.assert_allclose(a, e, rtol=0, atol=atol, err_msg=f"{what}: output {i}")


def _canonical(config) -> str:
    return json.dumps(config, sort_keys=True, default=repr)


def _as_model(obj, inputs) -> keras.Model:
    """Returns ``obj`` if it is a model, else a functional model wrapping the layer."""
    if isinstance(obj, keras.Model):
        return obj
    symbolic = keras.tree.map_structure(
        lambda x: keras.Input(shape=tuple(np.shape(x))[1:],
                              dtype=keras.backend.standardize_dtype(x.dtype)), inputs)
    return keras.Model(symbolic, obj(symbolic), name=f"{obj.name}_wrapper")


def _copy_weights(src, dst) -> None:
    assert len(src.weights) == len(dst.weights), (
        f"{len(dst.weights)} weights after from_config, expected {len(src.weights)}")
    for a, b in zip(src.weights, dst.weights):
        assert a.path == b.path and tuple(a.shape) == tuple(b.shape), (
            f"weight mismatch: {b.path} {b.shape} vs {a.path} {a.shape}")
        b.assign(a)


def assert_roundtrip(model_or_layer, inputs, *, custom_objects=None, atol: float = ATOL):
    """Asserts config round trip, weight-copy equivalence and ``.keras`` save/load.

    Checks, in order:
      1. ``serialize_keras_object`` -> ``deserialize_keras_object`` (registration or
         ``custom_objects``) rebuilds an object whose ``get_config()`` equals the
         original's (same architecture, layer names and hyper-parameters);
      2. after copying the weights one by one (paths and shapes must match in order)
         the rebuilt object gives identical outputs;
      3. ``model.save(tmp.keras)`` + ``keras.models.load_model`` gives identical
         outputs (a layer is wrapped in a functional model first).

    Args:
        model_or_layer: A built or unbuilt ``keras.Model`` / ``keras.layers.Layer``.
        inputs: Array(s) for one call; nested structures allowed.
        custom_objects: For objects that are not registered (ours all are).
        atol: Absolute tolerance of the output comparisons (default 1e-6).

    Returns:
        The object rebuilt from config (weights copied), for further checks.
    """
    expected = _flat_outputs(model_or_layer, inputs)  # builds it if needed

    config = keras.saving.serialize_keras_object(model_or_layer)
    with keras.saving.custom_object_scope(custom_objects or {}):
        clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(model_or_layer), f"{type(clone)} != {type(model_or_layer)}"
    assert _canonical(clone.get_config()) == _canonical(model_or_layer.get_config()), (
        "get_config() of the object rebuilt from config differs from the original")
    if not clone.built:
        clone(inputs, training=False)
    _copy_weights(model_or_layer, clone)
    _assert_outputs_equal(expected, _flat_outputs(clone, inputs), "from_config + weights", atol)

    model = _as_model(model_or_layer, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "roundtrip.keras")
        model.save(path)
        loaded = keras.models.load_model(path, custom_objects=custom_objects)
    _assert_outputs_equal(_flat_outputs(model, inputs), _flat_outputs(loaded, inputs),
                          "save + load_model", atol)
    return clone


def assert_config_complete(layer_cls, kwargs: dict, *, custom_objects=None):
    """Asserts every constructor argument is stored and returned by ``get_config``.

    ``layer_cls(**kwargs)`` is built; every named parameter of ``__init__`` (other
    than ``self``, ``*args``, ``**kwargs``) must be a key of ``get_config()``; every
    passed kwarg must come back with an equal value (JSON-normalised, so a tuple may
    come back as a list); and ``from_config(get_config())`` must reproduce the config.

    Args:
        layer_cls: A ``keras.layers.Layer`` (or ``keras.Model``) subclass.
        kwargs: Non-default constructor arguments to pass.
        custom_objects: Forwarded to ``from_config`` via ``custom_object_scope``.

    Returns:
        The instance built from ``kwargs``.
    """
    obj = layer_cls(**kwargs)
    config = obj.get_config()
    params = [p for p in inspect.signature(layer_cls.__init__).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in params if p.name not in config]
    assert not missing, f"{layer_cls.__name__}.get_config() lacks {missing}"
    for key, value in kwargs.items():
        assert key in config, f"{layer_cls.__name__}.get_config() lacks {key!r}"
        assert _canonical(config[key]) == _canonical(value), (
            f"{layer_cls.__name__}.get_config()[{key!r}] = {config[key]!r}, passed {value!r}")
    with keras.saving.custom_object_scope(custom_objects or {}):
        again = layer_cls.from_config(config)
    assert _canonical(again.get_config()) == _canonical(config), (
        f"{layer_cls.__name__}.from_config(get_config()) changes the config")
    return obj
