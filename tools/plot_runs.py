"""kNN top-1 against epoch and the loss against step for several runs, one PNG.

    python tools/plot_runs.py RUN_DIR [RUN_DIR ...] --out=runs.png \
        [--labels=a,b,...] [--terms=loss] [--title=...]

Each run directory is one ``tfssl.train`` run: ``metrics.jsonl`` gives kNN top-1
per epoch (epoch 0: at initialisation), the TensorBoard logs under ``tb/`` the loss
terms per logged step (``train/<term>``; ``--terms=loss,l_s`` plots several). Runs
are labelled by their method and seed (``config.json``) unless ``--labels`` says
otherwise; runs of one method share a colour, other seeds are dashed.
matplotlib is needed by this tool only (``pip install matplotlib``), not by
training.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_run(run_dir, terms):
    """``(label, method, seed, knn [(epoch, top1)], {term: [(step, value)]})``."""
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    method, seed = config["train"]["method"], config["train"]["seed"]
    knn = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if "knn_top1" in row:
                    knn.append((row["epoch"], row["knn_top1"]))
    curves = {}
    tb = os.path.join(run_dir, "tb")
    if os.path.isdir(tb):
        import tensorflow as tf
        from tensorboard.backend.event_processing import event_accumulator

        acc = event_accumulator.EventAccumulator(tb, size_guidance={"tensors": 0})
        acc.Reload()
        for term in terms:
            tag = f"train/{term}"
            if tag in acc.Tags()["tensors"]:
                curves[term] = [(e.step, float(tf.make_ndarray(e.tensor_proto)))
                                for e in acc.Tensors(tag)]
    label = method if seed == 0 else f"{method} (seed {seed})"
    return label, method, seed, knn, curves


def plot(runs, out, terms=("loss",), labels=None, title=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [read_run(r, terms) for r in runs]
    colours = {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (label, method, seed, knn, curves) in enumerate(data):
        colour = colours.setdefault(method, f"C{len(colours) % 10}")
        style = "-" if seed == 0 else "--"
        name = labels[i] if labels else label
        if knn:
            left.plot(*zip(*knn), style, marker="o", color=colour, label=name)
        for j, term in enumerate(terms):
            if term in curves:
                right.plot(*zip(*curves[term]), style if j == 0 else ":", color=colour,
                           label=name if len(terms) == 1 else f"{name}: {term}")
    left.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN top-1 (k from the run)")
    right.set(xlabel="step", ylabel=" / ".join(terms), title="training loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--labels", default="")
    p.add_argument("--terms", default="loss")
    p.add_argument("--title", default="")
    args = p.parse_args(argv)
    labels = args.labels.split(",") if args.labels else None
    if labels and len(labels) != len(args.runs):
        print(f"error: {len(labels)} labels for {len(args.runs)} runs", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: tools/plot_runs.py needs matplotlib: pip install matplotlib",
              file=sys.stderr)
        return 2
    for run in args.runs:
        if not os.path.exists(os.path.join(run, "metrics.jsonl")):
            print(f"error: {run} is not a run directory (no metrics.jsonl)",
                  file=sys.stderr)
            return 2
    print(plot(args.runs, args.out, tuple(args.terms.split(",")), labels,
               args.title or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
