"""Every method's whole training step compiles with XLA (static shapes, traced once)
and matches the plain graph step: the TPU-readiness check on CPU."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import METHOD_CASES, tiny_config
from tests.test_methods import real_views
from tfssl.methods import METHODS
from tfssl.trainer import build_model, make_train_function

STRATEGY = tf.distribute.get_strategy()
STEPS = 3
# Per-method settings (tests/helpers.py METHOD_CASES) keep the XLA compile small and
# run the periodic work inside the steps (SMoG: k-means re-grouping and target reset
# after the last one). Results of random draws inside the step (its
# random_results): TF's stateless RNG gives other bits under XLA than in the CPU
# kernels (same seed), so SMoG's k-means++ seeding picks other rows; these are
# checked for unit norm instead of equality. A case whose xla_test names other
# methods is compiled through theirs.

def run(model, batches, jit_compile):
    """One train function over ``batches``: (function, logs per call)."""
    views = tuple(np.stack([b[i] for b in batches]) for i in range(len(batches[0])))
    dataset = tf.data.Dataset.from_tensor_slices(views)
    assert all(spec.shape.is_fully_defined() for spec in dataset.element_spec)
    iterator = iter(dataset)
    fn = make_train_function(model, STRATEGY, jit_compile=jit_compile)
    logs = [{k: float(v) for k, v in fn(iterator).items()} for _ in batches]
    return fn, logs


@pytest.mark.parametrize("method", [m for m in METHODS.names()
                                    if METHOD_CASES[m].xla_test is None])
def test_xla_step_compiles_once_and_matches_the_graph_step(tmp_path, method):
    config = tiny_config(tmp_path, method, batch=8, queue=16, image_size=16,
                         **METHOD_CASES[method].xla)
    graph = build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    batches = [tuple(v.numpy() for v in real_views(graph, 8, seed=s))
               for s in range(STEPS)]
    xla = build_model(config, STRATEGY, 10, (0.5,) * 3, (0.5,) * 3)
    for v, w in zip(xla.weights, graph.weights):
        v.assign(w)

    _, expected = run(graph, batches, jit_compile=False)
    fn, logs = run(xla, batches, jit_compile=True)

    # Traced once (static shapes). An XLA recompile per step (a value-dependent
    # compile-time constant such as a tensor index in x[i]) is not timed here —
    # tests hold no speed targets; tools/benchmark.py's step times show it.
    assert fn.experimental_get_tracing_count() == 1
    for a, b in zip(expected, logs):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), key
    for w1, w2 in zip(graph.weights, xla.weights):
        if w1.path in METHOD_CASES[method].random_results:
            np.testing.assert_allclose(np.linalg.norm(w2.numpy(), axis=-1), 1.0,
                                       atol=1e-5)
        else:
            np.testing.assert_allclose(w2.numpy(), w1.numpy(), rtol=1e-3,
                                       atol=1e-4, err_msg=w1.path)
    # Momentum buffers are sums of gradients, where XLA's other summation order
    # shows most (amplified by the 1/τ of the losses): ~0.5% here.
    for s1, s2 in zip(graph.optimizer.variables, xla.optimizer.variables):
        np.testing.assert_allclose(s2.numpy(), s1.numpy(), rtol=1e-2, atol=1e-3,
                                   err_msg=s1.path)
