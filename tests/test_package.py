"""The package: a wheel built from pyproject.toml carries the code and the shipped
flagfiles, and runs from outside the checkout."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel, unpacked as site-packages would hold it."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    for name in ("tfssl", "configs"):
        shutil.copytree(os.path.join(ROOT, name), src / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path_factory.mktemp("wheels")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = wheels.glob("tfssl-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(site)
    return site, names


def test_the_wheel_holds_the_code_and_every_flagfile(installed):
    _, names = installed
    shipped = sorted(os.path.relpath(os.path.join(d, f), ROOT)
                     for d, _, files in os.walk(os.path.join(ROOT, "configs"))
                     for f in files if f.endswith(".flags"))
    assert sorted(n.replace("tfssl/", "", 1) for n in names
                  if n.startswith("tfssl/configs/")) == shipped
    assert "tfssl/methods/multinet.py" in names and "tfssl/data/records.py" in names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_cli_runs_from_any_directory_with_a_shipped_config(installed,
                                                                     tmp_path):
    site, _ = installed
    env = dict(os.environ, PYTHONPATH=str(site), CUDA_VISIBLE_DEVICES="")

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    where = run("-c", "import tfssl, tfssl.configs as c; print(tfssl.__file__, c.root())")
    assert where.stdout.startswith(str(site)) and f"{site}/tfssl/configs" in where.stdout
    out = run("-m", "tfssl.train", "--config=fashion_mnist/quickstart",
              "--model_dir=run", "--backbone=resnet10", "--width=0.125",
              "--global_batch_size=32", "--queue_size=256", "--epochs=1",
              "--steps_per_epoch=2", "--knn_train_examples=128",
              "--knn_eval_examples=64")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "config.json").exists()
    # The repository's spelling works there too (the include lines are inlined).
    bad = run("-m", "tfssl.train", "--flagfile=configs/cifar10/ressl.flags",
              "--model_dir=x", "--epochs=0")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --epochs=0 must be > 0."
    unknown = run("-m", "tfssl.train", "--config=cifar10/simclr", "--model_dir=x")
    assert unknown.returncode == 2 and "cifar10/ressl" in unknown.stderr
