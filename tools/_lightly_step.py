"""The PyTorch / lightly side of ``tools/compare_pytorch.py`` (run by the compare
venv's Python; prints one JSON line).

    .venv-compare/bin/python tools/_lightly_step.py --mode=step --method=moco_v2 \
        [--spec_json=PATH] [--batch=64 --image_size=32 --threads=2 --steps=10
        --warmup=3]
    ... --mode=backbone          bare ResNet forward + backward
    ... --mode=pipeline          torchvision transforms, DataLoader(num_workers=T)

``--spec_json`` is a JSON line printed by ``tools/benchmark.py`` for the same
configuration: its ``config`` (the resolved tfssl run configuration) sets every
size and hyper-parameter below and its ``view_specs`` the augmentation recipe, so
both sides do the same work. Without it the CIFAR-10 flagfiles' values
(``configs/cifar10/<method>.flags``) are used.

Each method is built from lightly's blocks the way lightly's own examples
(``examples/pytorch/{moco,byol,smog}.py``) build it, on torchvision's ResNet with
the CIFAR stem (``conv1`` 3x3 stride 1, ``maxpool`` = Identity; ``fc`` dropped), a
per-channel ``(x - mean) / std`` in front (ours normalises inside the backbone
too), the momentum copies made with ``copy.deepcopy`` + ``deactivate_requires_grad``
and moved with ``update_momentum`` (parameters only, as ours without ``--ema_bn``),
everything in training mode (the momentum networks normalise with batch statistics,
as ours). Optimizer: ``torch.optim.SGD`` (``--optimizer=sgd``) or lightly's
``LARS`` (``--optimizer=lars``) with momentum ``--sgd_momentum`` (0.9), learning
rate ``base x B / 256`` and weight decay on the weight matrices only (lightly's
``get_weight_decay_parameters``: no decay, and with LARS no trust ratio, on BN
parameters and biases: ours excludes every 1-D variable, the same set).

One timed step = the whole step on one fixed batch in memory, as
``tools/benchmark.py`` times ours (forward, backward, optimizer, momentum update,
queue / group update), median of ``--steps`` after ``--warmup`` untimed steps:

* ``moco_v2`` (ours: ``tfssl/methods/moco_v2.py``, ``--moco_symmetric=false``):
  ``update_momentum(m)``; ``q = g(f(x1))`` (``MoCoProjectionHead`` 512-512-128,
  Linear-ReLU-Linear); ``k = g_t(f_t(x2))``; ``NTXentLoss(τ=0.2,
  memory_bank_size=(4096, 128))``: InfoNCE of normalised ``q, k`` against the
  bank, then ``k`` enqueued; backward; optimizer. Same per-step work as ours:
  one online and one momentum pass over ``B`` images.
* ``byol`` (ours: ``byol.py``, symmetric): ``update_momentum(m)`` with lightly's
  ``cosine_schedule`` from ``--momentum`` to 1; ``p_i = q(g(f(x_i)))``,
  ``z_i = g_t(f_t(x_i))`` for both views (``BYOLProjectionHead`` 512-4096-256,
  ``BYOLPredictionHead`` 256-4096-256); ``NegativeCosineSimilarity`` of
  ``(p1, z2)`` + ``(p2, z1)``; backward; LARS. Four backbone passes, as ours.
* ``smog`` (ours: ``smog.py``, the default alternation of the view roles):
  views swapped on odd steps; ``update_momentum(m)``; ``h = g(f(x_a))``
  (``SMoGProjectionHead`` 512-2048-128 with BN on the output), ``p = q(h)``
  (``SMoGPredictionHead`` 128-2048-128), ``h_t = g_t(f_t(x_b))``;
  ``SMoGPrototypes`` (300 groups, β): ``assign_groups(h_t)``,
  ``get_updated_group_features(h)``, logits of ``p`` against them / τ,
  ``set_group_features``; ``CrossEntropyLoss``; ``h`` enqueued into a
  ``MemoryBankModule`` feature cache of ours' size (min(300 B, 65536) rows);
  backward; SGD. One online and one momentum pass, as ours.

Differences that remain (lightly's blocks as they are):

* SMoG: lightly's ``get_updated_group_features`` assigns the *online* features
  to groups for the update (ours uses the momentum branch's assignments, eq. 4),
  moves each used group in a Python loop over ``torch.unique`` (ours: one segment
  sum), does not re-normalise the stored rows, keeps β constant (ours: linear
  1 → β) and its projector's output BN has no affine parameters (ours has 2 x 128).
  Groups start as random unit rows (ours: k-means of step 0's features, inside
  the untimed warm-up). Neither side reaches a reset (every 300 steps) in the
  timed window; ours still carries the untaken ``tf.cond``.
* MoCo: lightly's bank is filled with random unit rows, ours too; lightly updates
  the momentum network before the forward (its examples' order), ours after the
  optimizer step: the same work once per step.
* The loss scale differs where the formulas do (BYOL ``2 − 2 cos`` vs ``−cos``),
  which costs nothing.
"""

import argparse
import copy
import json
import resource
import statistics
import sys
import time

#: configs/cifar10/<method>.flags (+ configs/common/cifar10.flags), the values the
#: tfssl config has for them; used when no --spec_json is given.
CIFAR_DEFAULTS = {
    "common": {"backbone": "resnet18", "stem": "cifar", "width": 1.0,
               "sgd_momentum": 0.9, "lars_eta": 0.001, "epochs": 200, "seed": 0},
    "moco_v2": {"queue_size": 4096, "momentum": 0.99, "momentum_schedule": "constant",
                "optimizer": "sgd", "base_learning_rate": 0.06, "weight_decay": 5e-4,
                "proj_hidden_dim": 512, "proj_dim": 128, "proj_layers": 2,
                "temperature": 0.2, "symmetric": False},
    "byol": {"momentum": 0.99, "momentum_schedule": "cosine", "optimizer": "lars",
             "base_learning_rate": 1.0, "weight_decay": 1e-5, "proj_hidden_dim": 4096,
             "proj_dim": 256, "proj_layers": 2, "pred_hidden_dim": 4096},
    "smog": {"momentum": 0.99, "momentum_schedule": "constant", "optimizer": "sgd",
             "base_learning_rate": 0.06, "weight_decay": 5e-4, "proj_hidden_dim": 2048,
             "proj_dim": 128, "proj_layers": 2, "pred_hidden_dim": 2048,
             "n_groups": 300, "temperature": 0.1, "beta": 0.99, "reset_interval": 300,
             "cache_size": 0, "symmetric": False, "crops": 2},
}
METHODS = ("moco_v2", "byol", "smog")
#: tfssl's automatic SMoG cache cap (tfssl.methods.smog.MAX_AUTO_CACHE).
MAX_AUTO_CACHE = 65536
#: Steps per epoch tools/benchmark.py builds ours with (for the schedules).
BENCHMARK_STEPS_PER_EPOCH = 1000


def settings(method, record=None, batch=None, image_size=None):
    """The flat hyper-parameters of ``method`` (pure Python, no torch).

    ``record``: a ``tools/benchmark.py`` JSON record (its ``config`` wins), else the
    CIFAR-10 flagfile values; ``batch`` / ``image_size`` fill what the record lacks.
    Raises ``ValueError`` for a variant this script does not implement.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    s = dict(CIFAR_DEFAULTS["common"], **CIFAR_DEFAULTS[method])
    s["method"] = method
    s["batch"], s["image_size"] = batch or 64, image_size or 32
    config = (record or {}).get("config")
    if config:
        data, model = config["data"], config["model"]
        optim, train = config["optim"], config["train"]
        if train["method"] != method:
            raise ValueError(f"--spec_json is a {train['method']} record, not {method}")
        s.update(batch=train["global_batch_size"], image_size=data["image_size"],
                 epochs=train["epochs"], seed=train["seed"],
                 momentum=train["momentum"],
                 momentum_schedule=train["momentum_schedule"],
                 queue_size=train["queue_size"])
        for key in ("backbone", "stem", "width", "proj_hidden_dim", "proj_dim",
                    "proj_layers", "pred_hidden_dim"):
            s[key] = model[key]
        for key in ("optimizer", "base_learning_rate", "weight_decay", "sgd_momentum",
                    "lars_eta"):
            s[key] = optim[key]
        params = config["method_params"]
        for key in ("temperature", "symmetric", "n_groups", "beta", "reset_interval",
                    "cache_size", "crops"):
            if key in params:
                s[key] = params[key]
    s["learning_rate"] = s["base_learning_rate"] * s["batch"] / 256.0
    s["total_steps"] = s["epochs"] * BENCHMARK_STEPS_PER_EPOCH
    problems = []
    if s["width"] != 1.0:
        problems.append(f"--width={s['width']} (torchvision has width 1 only)")
    if s["proj_layers"] != 2:
        problems.append(f"--proj_layers={s['proj_layers']} (lightly's heads have 2)")
    if s["optimizer"] not in ("sgd", "lars"):
        problems.append(f"--optimizer={s['optimizer']}")
    if s.get("symmetric"):
        problems.append(f"--{'moco' if method == 'moco_v2' else method}_symmetric")
    if method == "smog" and s.get("crops", 2) != 2:
        problems.append(f"--smog_crops={s['crops']}")
    if problems:
        raise ValueError("not implemented on the lightly side: " + ", ".join(problems))
    if method == "smog":
        s["cache_rows"] = smog_cache_rows(s["batch"], s["reset_interval"],
                                          s["cache_size"])
    return s


def smog_cache_rows(batch, reset_interval, cache_size=0):
    """Rows of ours' SMoG feature cache (``tfssl.methods.smog.cache_rows``, alternating
    roles: one batch of online features per step)."""
    if cache_size:
        return cache_size
    if not reset_interval:
        return batch
    return max(batch, min(reset_interval * batch, MAX_AUTO_CACHE) // batch * batch)


def blur_kernel_size(side):
    """``tfssl.data.augment.blur_kernel_size``: odd, ~10% of the side, at least 3."""
    return max(3, int(0.1 * side) // 2 * 2 + 1)


def synthetic_images(n, size, seed=0):
    """The same array as ``tools/benchmark.py --synthetic_data`` makes."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3),
                                                dtype=np.uint8)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("step", "backbone", "pipeline"), default="step")
    p.add_argument("--method", choices=METHODS, default="moco_v2")
    p.add_argument("--spec_json", default=None,
                   help="A file holding a tools/benchmark.py JSON line.")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--image_size", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pipeline_batches", type=int, default=20)
    p.add_argument("--synthetic_examples", type=int, default=2048)
    p.add_argument("--channels_last", action="store_true",
                   help="torch.channels_last memory format (not lightly's default).")
    p.add_argument("--autocast", choices=("none", "bfloat16"), default="none",
                   help="torch.autocast('cpu', dtype) around the forward passes and "
                   "the loss (ours: --mixed_precision=mixed_bfloat16).")
    return p.parse_args(argv)


# ---------------------------------------------------------------- torch parts


def set_threads(threads):
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set (parallel work started)
        pass
    return torch.get_num_threads(), torch.get_num_interop_threads()


def build_backbone(name, stem):
    """torchvision ResNet without ``fc``, CIFAR stem on request: ``[B, 3, S, S] ->
    [B, C]``, with ``(x - 0.5) / 0.5`` in front (ours: the source's statistics, 0.5
    for synthetic data)."""
    import torch
    import torchvision
    from torch import nn
    from torchvision.models import resnet

    blocks = {"resnet10": (resnet.BasicBlock, [1, 1, 1, 1]),
              "resnet18": (resnet.BasicBlock, [2, 2, 2, 2]),
              "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
              "resnet50": (resnet.Bottleneck, [3, 4, 6, 3])}
    if name == "resnet18":
        net = torchvision.models.resnet18()
    else:
        net = resnet.ResNet(*blocks[name])
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()

    class Normalize(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
            self.register_buffer("std", torch.full((1, 3, 1, 1), 0.5))

        def forward(self, x):
            return (x - self.mean) / self.std

    feature_dim = 2048 if name == "resnet50" else 512
    return nn.Sequential(Normalize(), *list(net.children())[:-1],
                         nn.Flatten(start_dim=1)), feature_dim


def build_optimizer(s, modules):
    import torch
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.utils.lars import LARS

    decay, no_decay = get_weight_decay_parameters(modules)
    groups = [{"params": decay, "weight_decay": s["weight_decay"]},
              {"params": no_decay, "weight_decay": 0.0}]
    if s["optimizer"] == "lars":
        return LARS(groups, lr=s["learning_rate"], momentum=s["sgd_momentum"],
                    trust_coefficient=s["lars_eta"])
    return torch.optim.SGD(groups, lr=s["learning_rate"], momentum=s["sgd_momentum"])


def momentum_at(s, step):
    from lightly.utils.scheduler import cosine_schedule

    if s["momentum_schedule"] == "cosine":
        return cosine_schedule(step, s["total_steps"], s["momentum"], 1.0)
    return s["momentum"]


def autocast_context(autocast):
    """A no-argument context factory: bfloat16 autocast on the CPU, or nothing."""
    import contextlib

    import torch

    if autocast == "bfloat16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def make_step(s, channels_last=False, autocast="none"):
    """``(step(i) -> loss float, model)`` for ``s["method"]`` on a fixed batch; the
    forward passes and the loss under ``autocast`` (backward and optimizer outside)."""
    import torch
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import (BYOLPredictionHead, BYOLProjectionHead,
                                        MoCoProjectionHead, SMoGPredictionHead,
                                        SMoGProjectionHead, SMoGPrototypes)
    from lightly.models.modules.memory_bank import MemoryBankModule
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from torch import nn

    torch.manual_seed(s["seed"])
    method = s["method"]
    backbone, dim = build_backbone(s["backbone"], s["stem"])
    if method == "moco_v2":
        proj = MoCoProjectionHead(dim, s["proj_hidden_dim"], s["proj_dim"])
        pred = None
    elif method == "byol":
        proj = BYOLProjectionHead(dim, s["proj_hidden_dim"], s["proj_dim"])
        pred = BYOLPredictionHead(s["proj_dim"], s["pred_hidden_dim"], s["proj_dim"])
    else:
        proj = SMoGProjectionHead(dim, s["proj_hidden_dim"], s["proj_dim"])
        pred = SMoGPredictionHead(s["proj_dim"], s["pred_hidden_dim"], s["proj_dim"])
    backbone_m, proj_m = copy.deepcopy(backbone), copy.deepcopy(proj)
    deactivate_requires_grad(backbone_m)
    deactivate_requires_grad(proj_m)
    online = [m for m in (backbone, proj, pred) if m is not None]
    model = nn.ModuleList(online + [backbone_m, proj_m])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(s, online)

    images = synthetic_images(2 * s["batch"], s["image_size"], s["seed"])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    views = (x[:s["batch"]].clone(), x[s["batch"]:].clone())

    amp = autocast_context(autocast)

    def move(step):
        m = momentum_at(s, step)
        update_momentum(backbone, backbone_m, m)
        update_momentum(proj, proj_m, m)

    def finish(loss):
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    if method == "moco_v2":
        criterion = NTXentLoss(temperature=s["temperature"],
                               memory_bank_size=(s["queue_size"], s["proj_dim"]))
        model.append(criterion)

        def step(i):
            move(i)
            with amp():
                query = proj(backbone(views[0]))
                key = proj_m(backbone_m(views[1])).detach()
                loss = criterion(query, key)
            return finish(loss)

    elif method == "byol":
        criterion = NegativeCosineSimilarity()

        def step(i):
            move(i)
            with amp():
                p0 = pred(proj(backbone(views[0])))
                z0 = proj_m(backbone_m(views[0])).detach()
                p1 = pred(proj(backbone(views[1])))
                z1 = proj_m(backbone_m(views[1])).detach()
                loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            return finish(loss)

    else:
        groups = nn.functional.normalize(torch.rand(s["n_groups"], s["proj_dim"]),
                                         dim=1)
        smog = SMoGPrototypes(group_features=groups, beta=s["beta"])
        cache = MemoryBankModule(size=(s["cache_rows"], s["proj_dim"]))
        criterion = nn.CrossEntropyLoss()
        model.extend([smog, cache])

        def step(i):
            x0, x1 = views if i % 2 == 0 else views[::-1]
            move(i)
            with amp():
                x0_encoded = proj(backbone(x0))
                x0_predicted = pred(x0_encoded)
                x1_encoded = proj_m(backbone_m(x1))
                assignments = smog.assign_groups(x1_encoded)
                group_features = smog.get_updated_group_features(x0_encoded)
                logits = smog(x0_predicted, group_features,
                              temperature=s["temperature"])
                smog.set_group_features(group_features)
                loss = criterion(logits, assignments)
                cache(x0_encoded, update=True)
            return finish(loss)

    return step, model


def make_backbone_step(s, channels_last=False, autocast="none"):
    """Bare backbone: forward (training mode, under ``autocast``) + backward of
    ``mean(pooled²)``, the gradients consumed by their global norm, no optimizer (as
    benchmark.py's)."""
    import torch

    torch.manual_seed(s["seed"])
    backbone, _ = build_backbone(s["backbone"], s["stem"])
    backbone.train()
    x = torch.rand(s["batch"], 3, s["image_size"], s["image_size"])
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = [p for p in backbone.parameters() if p.requires_grad]
    amp = autocast_context(autocast)

    def step(i):
        with amp():
            loss = backbone(x).float().square().mean()
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        for p in params:
            p.grad = None
        return float(loss.detach()), float(norm)

    return step, backbone


def view_transform(spec):
    """torchvision (PIL) transform of one tfssl ``ViewSpec`` dict, same op order:
    random resized crop, flip, colour jitter, grayscale, blur, solarize, to tensor."""
    from torchvision import transforms as T

    size = spec["size"]
    ops = [T.RandomResizedCrop(size, scale=tuple(spec["crop_scale"]),
                               ratio=tuple(spec["crop_ratio"]))]
    if spec["flip_p"] > 0:
        ops.append(T.RandomHorizontalFlip(spec["flip_p"]))
    if spec["jitter_p"] > 0 and any(spec["jitter"]):
        ops.append(T.RandomApply([T.ColorJitter(*spec["jitter"])], p=spec["jitter_p"]))
    if spec["gray_p"] > 0:
        ops.append(T.RandomGrayscale(spec["gray_p"]))
    if spec["blur_p"] > 0:
        ops.append(T.RandomApply(
            [T.GaussianBlur(blur_kernel_size(size), tuple(spec["blur_sigma"]))],
            p=spec["blur_p"]))
    if spec["solarize_p"] > 0:
        ops.append(T.RandomSolarize(threshold=128, p=spec["solarize_p"]))
    ops.append(T.ToTensor())
    return T.Compose(ops)


def default_view_specs(method, size):
    """tfssl's recipes at ``size`` (``tfssl.data.views``; blur only above 32 px)."""
    base = {"size": size, "crop_scale": [0.2, 1.0], "crop_ratio": [0.75, 4 / 3],
            "flip_p": 0.5, "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_p": 0.8,
            "gray_p": 0.2, "blur_p": 0.5 if size > 32 else 0.0,
            "blur_sigma": [0.1, 2.0], "solarize_p": 0.0}
    if method == "moco_v2":
        return [base, dict(base)]
    a = dict(base, jitter=[0.4, 0.4, 0.2, 0.1], blur_p=1.0 if size > 32 else 0.0)
    return [a, dict(a, blur_p=0.1 if size > 32 else 0.0, solarize_p=0.2)]


def measure_pipeline(s, specs, threads, batches, examples):
    """Source images/s of ``DataLoader(num_workers=threads)`` over PIL views."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset, RandomSampler

    images = synthetic_images(examples, s["image_size"], s["seed"])
    transforms = [view_transform(spec) for spec in specs]

    class Views(Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            image = Image.fromarray(images[i])
            return tuple(t(image) for t in transforms)

    batch = s["batch"]
    sampler = RandomSampler(Views(), num_samples=(batches + 1) * batch,
                            generator=torch.Generator().manual_seed(s["seed"]))
    loader = DataLoader(Views(), batch_size=batch, sampler=sampler,
                        num_workers=threads, drop_last=True)
    it = iter(loader)
    next(it)  # workers started, first batch out
    started = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - started)


def time_calls(fn, warmup, timed):
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(warmup, warmup + timed):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return times


def main(argv=None):
    args = parse_args(argv)
    record = None
    if args.spec_json:
        with open(args.spec_json) as f:
            record = json.loads(f.read().strip().splitlines()[-1])
    try:
        s = settings(args.method, record, args.batch, args.image_size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.batch and args.batch != s["batch"]:
        print(f"error: --batch={args.batch} but the spec has {s['batch']}",
              file=sys.stderr)
        return 2
    intra, inter = set_threads(args.threads)

    import lightly
    import torch
    import torchvision

    out = {"side": "lightly", "mode": args.mode, "method": args.method,
           "backbone": s["backbone"], "stem": s["stem"], "image_size": s["image_size"],
           "global_batch_size": s["batch"], "threads": args.threads,
           "intra_op_threads": intra, "inter_op_threads": inter,
           "channels_last": args.channels_last, "autocast": args.autocast,
           "torch": torch.__version__,
           "torchvision": torchvision.__version__, "lightly": lightly.__version__}
    if args.mode == "pipeline":
        specs = (record or {}).get("view_specs") or default_view_specs(
            args.method, s["image_size"])
        rate = measure_pipeline(s, specs, args.threads, args.pipeline_batches,
                                args.synthetic_examples)
        out.update(num_workers=args.threads, pipeline_batches=args.pipeline_batches,
                   views=[spec["size"] for spec in specs],
                   pipeline_images_per_sec=round(rate, 1))
    else:
        if args.mode == "backbone":
            step, _ = make_backbone_step(s, args.channels_last, args.autocast)
        else:
            step, _ = make_step(s, args.channels_last, args.autocast)
        times = time_calls(step, args.warmup, args.steps)
        median = statistics.median(times)
        out.update(timed_steps=args.steps, warmup_steps=args.warmup,
                   step_seconds_median=round(median, 4),
                   step_seconds_min=round(min(times), 4),
                   step_seconds=[round(x, 4) for x in times],
                   train_images_per_sec=round(s["batch"] / median, 1))
        if args.mode == "step":
            out["settings"] = s
    out["peak_host_memory_mib"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
