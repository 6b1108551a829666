"""tfssl: momentum-based relational self-supervised learning in TensorFlow 2 / Keras 3."""

import os as _os

# oneDNN kernels for TensorFlow's CPU ops (convolutions, matmuls, batch norm).
# TensorFlow enables them by default only on CPUs with AVX-512 VNNI / BF16 or AMX; on
# AVX2 CPUs they are also much faster than the default kernels and than XLA
# (docs/BENCHMARKS.md). It acts
# only when tfssl is imported before TensorFlow (as ``python -m tfssl.*`` does);
# ``TF_ENABLE_ONEDNN_OPTS=0`` in the environment opts out.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
