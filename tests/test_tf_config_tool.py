"""tools/tf_config.py: SLURM host lists -> TF_CONFIG."""

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools"))
import tf_config  # noqa: E402

TOOL = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", "tf_config.py")


@pytest.mark.parametrize("nodelist, hosts", [
    ("node1", ["node1"]),
    ("a,b", ["a", "b"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("gpu[8-10],login", ["gpu8", "gpu9", "gpu10", "login"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert tf_config.expand_nodelist(nodelist) == hosts


def test_tf_config_lists_every_task():
    config = tf_config.tf_config("n[1-2]", 3, 2000, tasks_per_node=2)
    assert config == {"cluster": {"worker": ["n1:2000", "n1:2001", "n2:2000",
                                             "n2:2001"]},
                      "task": {"type": "worker", "index": 3}}


def test_cli_prints_json_and_rejects_missing_env():
    env = dict(os.environ, SLURM_JOB_NODELIST="h[1-2]", SLURM_PROCID="1")
    out = subprocess.run([sys.executable, TOOL, "--port=9000"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["task"] == {"type": "worker", "index": 1}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    bad = subprocess.run([sys.executable, TOOL], env=env, capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "SLURM_JOB_NODELIST" in bad.stderr
    assert "Traceback" not in bad.stderr
