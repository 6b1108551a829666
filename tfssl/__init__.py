"""tfssl: momentum-based relational self-supervised learning in TensorFlow 2 / Keras 3."""

import os as _os

# oneDNN kernels for TensorFlow's CPU ops (convolutions, matmuls, batch norm).
# TensorFlow enables them by default only on CPUs with AVX-512 VNNI / BF16 or AMX; on
# the AVX2 CPU measured in docs/BENCHMARKS.md they run a ResNet-18 forward+backward
# about 2x faster than TensorFlow's default kernels and 1.4x faster than XLA, and the
# methods' training steps 1.2x faster than XLA. It acts
# only when tfssl is imported before TensorFlow (as ``python -m tfssl.*`` does);
# ``TF_ENABLE_ONEDNN_OPTS=0`` in the environment opts out.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
