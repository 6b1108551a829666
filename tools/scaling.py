"""Training throughput on 1 device, 2 in-process replicas and 2 worker processes.

    python tools/scaling.py [--flagfile=configs/fashion_mnist/quickstart.flags]
        [--steps=20] [--method=ressl] [extra training flags ...]

Runs ``python -m tfssl.train`` three ways on this machine with the same flags and
global batch: ``--strategy=default``; ``--strategy=mirrored --cpu_devices=2`` (or
every local GPU); two ``--strategy=multi_worker`` processes on 127.0.0.1 ports.
Each trains two epochs of ``--steps`` steps; the second epoch's ``images_per_sec``
(``metrics.jsonl``: the whole loop — input pipeline, step, logging — after tracing)
is reported. Prints one JSON line per setting and a Markdown table.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def second_epoch_rate(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r.get("epoch") == 2][0]["images_per_sec"]


def run(name, train_args, model_dir, workers=1, extra=()):
    """Trains with ``workers`` processes; returns (images/s, wall seconds)."""
    command = [sys.executable, "-m", "tfssl.train", *train_args,
               f"--model_dir={model_dir}", *extra]
    ports = free_ports(workers)
    procs, started = [], time.perf_counter()
    for index in range(workers):
        env = dict(os.environ)
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(command, cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"scaling.py: {name} failed:\n{err[-2000:]}")
    return second_epoch_rate(model_dir), time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flagfile", default="configs/fashion_mnist/quickstart.flags")
    parser.add_argument("--steps", type=int, default=20)
    args, extra = parser.parse_known_args()
    train_args = [f"--flagfile={args.flagfile}", "--epochs=2",
                  f"--steps_per_epoch={args.steps}", "--knn_train_examples=512",
                  "--knn_eval_examples=256", "--projector_examples=0", *extra]
    settings = [("1 device", 1, ["--strategy=default"]),
                ("2 replicas, 1 process", 1, ["--strategy=mirrored", "--cpu_devices=2"]),
                ("2 workers", 2, ["--strategy=multi_worker"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="tfssl_scaling_") as tmp:
        for i, (name, workers, flags) in enumerate(settings):
            rate, wall = run(name, train_args, os.path.join(tmp, str(i)), workers, flags)
            row = {"setting": name, "images_per_sec": round(rate, 1),
                   "wall_s": round(wall, 1), "flags": " ".join(train_args + flags)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = rows[0]["images_per_sec"]
    print("\n| setting | img/s | vs 1 device | wall s |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['setting']} | {row['images_per_sec']:.1f} | "
              f"{row['images_per_sec'] / base:.2f}x | {row['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
