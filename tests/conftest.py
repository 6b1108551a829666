"""Test set-up: two logical CPU devices (for MirroredStrategy tests), quiet TF."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfssl  # noqa: E402,F401  (before TensorFlow: its oneDNN default, as users get)
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
try:
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # already initialised by an earlier import
    pass

import pytest  # noqa: E402

_MIRRORED = []


@pytest.fixture(scope="session")
def mirrored():
    """One MirroredStrategy over the two logical CPUs for the whole session.

    A second MirroredStrategy in the same process reuses collective instance keys
    with other shapes ("Shape mismatch in the collective instance"), so every test
    shares this one.
    """
    if not _MIRRORED:
        _MIRRORED.append(tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"]))
    return _MIRRORED[0]


def pytest_report_header(config):
    """The CPU and its ISA: oneDNN's kernels (and so results' rounding) depend on it."""
    from tfssl.platform import cpu_summary

    return cpu_summary()


def pytest_terminal_summary(terminalreporter):
    """The same line at the end, where ``-q`` (``make test``) still shows it."""
    from tfssl.platform import cpu_summary

    terminalreporter.write_line(cpu_summary())
