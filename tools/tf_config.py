"""Prints the ``TF_CONFIG`` of this task of a SLURM job, for ``--strategy=multi_worker``.

    srun bash -c 'TF_CONFIG=$(python tools/tf_config.py --port=23456) \
        python -m tfssl.train --flagfile=... --strategy=multi_worker --model_dir=SHARED'

One worker per SLURM task: the cluster is every host of ``SLURM_JOB_NODELIST`` (in
order, ``--tasks_per_node`` tasks each on consecutive ports), this task is
``SLURM_PROCID``. Worker 0 is the chief (it writes checkpoints and logs).
"""

import argparse
import json
import os
import re
import sys


def expand_nodelist(nodelist):
    """SLURM's compressed host list -> host names, e.g. ``gpu[01-03,07],login``
    -> ``gpu01 gpu02 gpu03 gpu07 login`` (zero padding kept)."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)",
                                            nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
                continue
            for i in range(int(lo), int(hi) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}")
    return hosts


def tf_config(nodelist, task_index, port, tasks_per_node=1):
    """The ``TF_CONFIG`` dict of worker ``task_index``."""
    workers = [f"{host}:{port + k}" for host in expand_nodelist(nodelist)
               for k in range(tasks_per_node)]
    if not 0 <= task_index < len(workers):
        raise ValueError(f"task {task_index} is not among the {len(workers)} workers "
                         f"of {nodelist!r}")
    return {"cluster": {"worker": workers},
            "task": {"type": "worker", "index": task_index}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=23456,
                        help="first port of each host's workers")
    parser.add_argument("--tasks_per_node", type=int, default=1)
    args = parser.parse_args(argv)
    missing = [k for k in ("SLURM_JOB_NODELIST", "SLURM_PROCID") if k not in os.environ]
    if missing:
        sys.exit(f"tf_config.py: {', '.join(missing)} not set; run it inside a SLURM "
                 "job step (srun).")
    try:
        config = tf_config(os.environ["SLURM_JOB_NODELIST"],
                           int(os.environ["SLURM_PROCID"]), args.port,
                           args.tasks_per_node)
    except ValueError as e:
        sys.exit(f"tf_config.py: {e}")
    print(json.dumps(config))


if __name__ == "__main__":
    main()
