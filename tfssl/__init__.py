"""tfssl: momentum-based relational self-supervised learning in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
