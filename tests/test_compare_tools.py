"""tools/compare_pytorch.py's helpers and tools/benchmark.py --synthetic_data
(none of it needs torch)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _load("compare_pytorch")
lightly_step = _load("_lightly_step")  # imports torch only inside its functions


def test_parse_args_defaults_and_overrides():
    a = compare.parse_args([])
    assert a.methods == ["moco_v2", "byol", "smog"]
    assert (a.batch, a.image_size, a.threads, a.steps, a.warmup, a.rounds) == (
        64, 32, 2, 10, 3, 2)
    assert not a.jit_compile and not a.skip_pipeline and not a.skip_backbone
    assert a.venv.endswith(".venv-compare")
    a = compare.parse_args(["--methods=smog,byol", "--batch=8", "--nojit_compile",
                            "--skip_pipeline", "--steps=2", "--warmup=0",
                            "--venv=/tmp/v"])
    assert a.methods == ["smog", "byol"] and a.batch == 8 and a.warmup == 0
    assert not a.jit_compile and a.skip_pipeline and a.venv == "/tmp/v"
    assert not compare.parse_args(["--no-jit_compile"]).jit_compile
    assert compare.parse_args(["--jit_compile"]).jit_compile


@pytest.mark.parametrize("argv", [["--methods=simclr"], ["--batch=0"],
                                  ["--warmup=-1"], ["--batch=4096"]])
def test_parse_args_rejects(argv, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(argv)


def test_median_ratio_and_json_line():
    assert compare.median([3.0, 1.0, 2.0]) == 2.0
    assert compare.median([1.0, None, 4.0]) == 2.5
    assert compare.median([None]) is None
    assert compare.ratio(20.6, 34.5) == 0.6
    assert compare.ratio(1.0, 0) is None and compare.ratio(None, 1.0) is None
    text = 'warming up\n{"a": 1}\nnoise {\n{"b": 2}\n'
    assert compare.parse_json_line(text) == {"b": 2}
    with pytest.raises(ValueError):
        compare.parse_json_line("no json here\n[1, 2]")


def test_summaries_and_table():
    s = compare.method_summary(
        "moco_v2", [{"train_images_per_sec": 20.0, "pipeline_images_per_sec": 1500.0},
                    {"train_images_per_sec": 24.0, "pipeline_images_per_sec": 1700.0}],
        [{"train_images_per_sec": 22.0}, {"train_images_per_sec": 22.0}],
        [{"pipeline_images_per_sec": 1500.0}, {"pipeline_images_per_sec": 1700.0}],
        [{"pipeline_images_per_sec": 800.0}])
    assert s["ours_images_per_sec"] == 22.0 and s["ratio"] == 1.0
    assert s["pipeline_ratio"] == 2.0 and s["ours_runs"] == [20.0, 24.0]
    b = compare.backbone_summary([{"train_images_per_sec": 20.6}],
                                 [{"train_images_per_sec": 27.4}],
                                 [{"train_images_per_sec": 34.5}])
    assert (b["ratio_plain"], b["ratio_xla"]) == (0.6, 0.79)
    missing = compare.method_summary("smog", [], [])
    assert missing["ratio"] is None
    text = compare.summary_tables([s, missing], b)
    lines = text.splitlines()
    assert lines[0].startswith("| method") and "ratio" in lines[0]
    assert any(line.startswith("| moco_v2") and line.rstrip().endswith("1.00 |")
               for line in lines)
    assert any(line.startswith("| smog") and "-" in line for line in lines)
    assert any("backbone fwd+bwd (XLA)" in line and "0.79" in line for line in lines)
    assert "1,600.0" in text  # the pipeline table (median of ours)
    widths = {len(line) for line in lines[:6] if line.startswith("|")}
    assert len(widths) == 1  # aligned columns


def test_commands_pass_the_same_settings():
    a = compare.parse_args(["--batch=32", "--threads=3", "--steps=4", "--warmup=1",
                            "--jit_compile"])
    ours = compare.ours_command(a, "byol", "python")
    assert any(x.endswith("configs/cifar10/byol.flags") for x in ours)
    for flag in ("--synthetic_data", "--global_batch_size=32", "--threads=3",
                 "--num_parallel_calls=3", "--timed_steps=4", "--warmup_steps=1",
                 "--jit_compile"):
        assert flag in ours
    bare = compare.ours_command(a, "byol", "python", bare_backbone=True,
                                jit_compile=False)
    assert "--bare_backbone" in bare and "--nojit_compile" in bare
    assert "--pipeline_batches=0" in bare
    theirs = compare.theirs_command(a, "byol", "python", "step", "/tmp/spec.json")
    for flag in ("--mode=step", "--method=byol", "--batch=32", "--threads=3",
                 "--steps=4", "--warmup=1", "--spec_json=/tmp/spec.json"):
        assert flag in theirs
    assert "--mixed_precision=none" in ours and "--autocast=none" in theirs
    assert compare.child_env(3)["OMP_NUM_THREADS"] == "3"


def test_mixed_precision_reaches_both_sides():
    a = compare.parse_args(["--mixed_precision=mixed_bfloat16"])
    assert "--mixed_precision=mixed_bfloat16" in compare.ours_command(a, "smog", "py")
    assert "--mixed_precision=mixed_bfloat16" in compare.ours_command(
        a, "smog", "py", bare_backbone=True, jit_compile=True)
    for mode in ("step", "backbone"):
        assert "--autocast=bfloat16" in compare.theirs_command(a, "smog", "py", mode)
    assert not any(x.startswith("--autocast") for x in
                   compare.theirs_command(a, "smog", "py", "pipeline"))
    assert lightly_step.parse_args(["--autocast=bfloat16"]).autocast == "bfloat16"
    assert lightly_step.parse_args([]).autocast == "none"
    with pytest.raises(SystemExit):  # float16 on a CPU: not offered
        compare.parse_args(["--mixed_precision=mixed_float16"])


def test_lightly_settings_follow_the_record():
    moco = lightly_step.settings("moco_v2")  # the CIFAR-10 flagfile values
    assert (moco["queue_size"], moco["temperature"], moco["proj_hidden_dim"]) == (
        4096, 0.2, 512)
    assert moco["learning_rate"] == pytest.approx(0.06 * 64 / 256)
    record = {"config": {
        "data": {"image_size": 16},
        "model": {"backbone": "resnet10", "stem": "cifar", "width": 1.0,
                  "proj_hidden_dim": 64, "proj_dim": 32, "proj_layers": 2,
                  "pred_hidden_dim": 48},
        "optim": {"optimizer": "sgd", "base_learning_rate": 0.5, "weight_decay": 1e-4,
                  "sgd_momentum": 0.8, "lars_eta": 0.02},
        "train": {"method": "smog", "global_batch_size": 8, "epochs": 3, "seed": 1,
                  "momentum": 0.9, "momentum_schedule": "constant",
                  "queue_size": 64},
        "method_params": {"n_groups": 10, "temperature": 0.3, "beta": 0.9,
                          "reset_interval": 5, "cache_size": 0, "symmetric": False,
                          "crops": 2}}}
    s = lightly_step.settings("smog", record)
    assert (s["batch"], s["image_size"], s["backbone"], s["n_groups"]) == (
        8, 16, "resnet10", 10)
    assert (s["temperature"], s["beta"], s["sgd_momentum"], s["pred_hidden_dim"]) == (
        0.3, 0.9, 0.8, 48)
    assert s["cache_rows"] == 40 and s["learning_rate"] == pytest.approx(0.5 * 8 / 256)
    with pytest.raises(ValueError, match="not byol"):
        lightly_step.settings("byol", record)
    record["config"]["method_params"]["symmetric"] = True
    with pytest.raises(ValueError, match="smog_symmetric"):
        lightly_step.settings("smog", record)
    assert lightly_step.smog_cache_rows(64, 300) == 19200
    assert lightly_step.smog_cache_rows(256, 300) == 65536
    assert [lightly_step.blur_kernel_size(n) for n in (32, 96, 224)] == [3, 9, 23]
    specs = lightly_step.default_view_specs("byol", 32)
    assert specs[1]["solarize_p"] == 0.2 and specs[0]["blur_p"] == 0.0


def test_benchmark_synthetic_data_json():
    """benchmark.py on synthetic images, a tiny MoCo-v2: one JSON line."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"),
           "--method=moco_v2", "--backbone=resnet10", "--width=0.125",
           "--global_batch_size=8", "--image_size=16", "--queue_size=64",
           "--proj_hidden_dim=32", "--proj_dim=16", "--timed_steps=1",
           "--warmup_steps=1", "--pipeline_batches=2", "--synthetic_data",
           "--synthetic_examples=64", "--threads=1", "--num_parallel_calls=1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = compare.parse_json_line(done.stdout)
    for key in ("train_images_per_sec", "pipeline_images_per_sec",
                "peak_host_memory_mib", "step_seconds_median", "view_specs", "config"):
        assert key in record, key
    assert record["train_images_per_sec"] > 0 and record["pipeline_images_per_sec"] > 0
    assert record["synthetic_data"] and record["threads"] == 1
    assert record["onednn"] is True  # tfssl's default, inherited by the child
    assert record["intra_op_threads"] == 1 and record["inter_op_threads"] == 1
    assert record["views"] == [16, 16] and record["global_batch_size"] == 8
    assert record["config"]["train"]["method"] == "moco_v2"
    assert lightly_step.settings("moco_v2", {"config": {
        **record["config"], "model": {**record["config"]["model"], "width": 1.0}}}
    )["queue_size"] == 64
    json.dumps(record)


profile_step = _load("profile_step")


def test_profile_step_classifies_trace_events():
    def c(name):
        return profile_step.classify(name, {"backbone", "target_backbone"})

    assert c("StatefulPartitionedCall/gradient_tape/backbone_1/layer4_0_conv2_1/"
             "convolution/Conv2DBackpropFilter:_MklNativeConv2DBackpropFilter") == (
        "gradient backbone", "Conv2DBackpropFilter")
    assert c("StatefulPartitionedCall/target_backbone_3/stem_conv_1/convolution:"
             "_MklNativePadWithConv2D") == ("forward target_backbone", "PadWithConv2D")
    assert c("StatefulPartitionedCall/AddN_18:AddN") == ("forward step", "AddN")
    assert c("StatefulPartitionedCall/gradient_tape/l2_normalize/Sum:Sum") == (
        "gradient step", "Sum")
    assert c("IteratorGetNext:IteratorGetNext") == ("outside step", "IteratorGetNext")
    assert c("ExecutorState::Process") is None and c("train_function") is None


def test_profile_step_splits_a_moco_step_by_part():
    """A tiny MoCo-v2 step traced: the online backbone has forward and gradient
    ops, the momentum (target) backbone forward ops only."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "profile_step.py"),
           "--method=moco_v2", "--backbone=resnet10", "--width=0.125",
           "--global_batch_size=8", "--image_size=16", "--queue_size=64",
           "--proj_hidden_dim=32", "--proj_dim=16", "--timed_steps=1",
           "--warmup_steps=1", "--synthetic_data", "--synthetic_examples=64",
           "--threads=1", "--num_parallel_calls=1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = compare.parse_json_line(done.stdout)
    parts = record["by_part_ms"]
    assert record["profile"] == "moco_v2" and record["step_seconds_median"] > 0
    for part in ("forward backbone", "gradient backbone", "forward target_backbone",
                 "forward projector", "gradient projector", "forward step"):
        assert parts.get(part, 0) > 0, (part, parts)
    assert "gradient target_backbone" not in parts
    assert set(parts) <= {f"{d} {p}" for d in ("forward", "gradient") for p in (
        "backbone", "target_backbone", "projector", "target_projector", "queue",
        "momentum_sgd", "step")} | {"outside step"}, parts
    assert abs(sum(parts.values()) - record["op_ms_per_step"]) < 0.1
    assert any(op.startswith("Conv2D") for op in record["by_op_ms"])
