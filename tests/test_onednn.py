"""tfssl turns on TensorFlow's oneDNN CPU kernels unless the environment says no."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROBE = ("import tfssl, tensorflow; "
          "from tensorflow.python.util import _pywrap_util_port as p; "
          "print(bool(p.IsMklEnabled()))")


def _onednn_enabled(value):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = value
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("value, expected", [(None, True), ("0", False)])
def test_onednn_default_and_opt_out(value, expected):
    assert _onednn_enabled(value) is expected
