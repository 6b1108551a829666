"""The shipped flagfiles, reachable from any directory.

The flagfiles live in the checkout's ``configs/`` and, in an installed package, in
``tfssl/configs/`` (package data). They include each other with repo-relative
lines (``--flagfile=configs/common/cifar10.flags``), which absl reads relative to
the working directory; :func:`expand_argv` therefore rewrites, before the flags are
parsed,

* ``--config=cifar10/ressl`` (a shipped flagfile by name; ``.flags`` optional), and
* ``--flagfile=configs/...`` when no such file exists under the working directory,

into one ``--flagfile`` of a temporary file with every shipped include inlined in
place (absl's order), so ``python -m tfssl.train --config=cifar10/ressl`` works
wherever it is run.
"""

import atexit
import os
import tempfile

from tfssl.errors import UserError

_PREFIX = "configs/"


def root():
    """The directory of the shipped flagfiles (installed package data, else the
    checkout's ``configs/``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "configs"),
                      os.path.join(os.path.dirname(here), "configs")):
        if os.path.isdir(os.path.join(candidate, "common")):
            return candidate
    raise UserError("the shipped flagfiles are missing (neither tfssl/configs nor "
                    "configs/ beside the package); reinstall tfssl.")


def names():
    """Every shipped flagfile as ``<dataset>/<name>`` (``common/*`` excluded)."""
    base = root()
    return sorted(f"{d}/{f[:-6]}" for d in os.listdir(base) if d != "common"
                  for f in os.listdir(os.path.join(base, d)) if f.endswith(".flags"))


def path_of(name):
    """The file of ``--config=name``."""
    name = name[:-6] if name.endswith(".flags") else name
    path = os.path.join(root(), name + ".flags")
    if not os.path.isfile(path):
        shown = ", ".join(n for n in names() if n.split("/")[0] == name.split("/")[0])
        raise UserError(f"--config={name} is not a shipped flagfile; choose one of "
                        f"{shown or ', '.join(names())}")
    return path


def _shipped(path):
    """``path`` if it exists, else the shipped file of a ``configs/...`` path."""
    if os.path.exists(path) or not path.startswith(_PREFIX):
        return path
    return os.path.join(root(), path[len(_PREFIX):])


def _inline(path, seen=()):
    """The lines of flagfile ``path`` with its includes expanded."""
    path = _shipped(path)
    if path in seen:
        raise UserError(f"flagfile {path} includes itself")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UserError(f"cannot read flagfile {path}: {os.strerror(e.errno or 0)}; "
                        "pass an existing file, or --config=<dataset>/<method>") from None
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("--flagfile="):
            out += _inline(stripped.split("=", 1)[1], seen + (path,))
        else:
            out.append(line)
    return out


def expand_argv(argv):
    """``argv`` with ``--config=NAME`` and unreachable ``--flagfile=configs/...``
    replaced by one inlined temporary flagfile each (see the module docstring)."""
    out = []
    for arg in argv:
        path = None
        if arg.startswith("--config="):
            path = path_of(arg.split("=", 1)[1])
        elif arg.startswith("--flagfile="):
            given = arg.split("=", 1)[1]
            if not os.path.exists(given) and given.startswith(_PREFIX):
                path = _shipped(given)
        if path is None:
            out.append(arg)
            continue
        fd, temp = tempfile.mkstemp(prefix="tfssl_", suffix=".flags")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(_inline(path)) + "\n")
        atexit.register(lambda p=temp: os.path.exists(p) and os.remove(p))
        out.append(f"--flagfile={temp}")
    return out
