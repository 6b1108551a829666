"""The run directory's rules: one live run, nothing changed by a refused command.

* :class:`RunLock` holds an exclusive ``flock`` on ``DIR/.lock`` for as long as a
  ``tfssl.train`` process runs, so a second run on the same ``--model_dir`` is
  refused instead of interleaving its checkpoints with the first one's. The kernel
  drops the lock when the process dies (even ``kill -9``), so it is never stale.
  (``flock`` is per host: on a network file system shared by several hosts, start
  one run per directory yourself.)
* A fresh directory the lock created is removed again when the command is refused
  before it wrote anything (:meth:`RunLock.release`).
* :func:`resume_conflicts` compares a command with the run's ``config.json``; the
  trainer refuses a resume that would change what the checkpoints mean.
* Files are replaced atomically (:func:`write_text`), so an interrupted or failed
  write leaves the previous version.
"""

import errno
import fcntl
import json
import os
import socket
import time

from tfssl.errors import UserError

LOCK_FILE = ".lock"

# Settings a resumed run may change: how it is run, monitored and logged, and how
# long it trains. Everything else (architecture, method, data, optimisation) would
# mix two runs in one directory.
RESUMABLE = {
    "data": {"data_dir", "num_parallel_calls", "examples_per_call", "eval_split",
             "eval_data_dir"},
    "model": {"fused_batch_norm"},
    "optim": set(),
    "train": {"epochs", "strategy", "tpu", "cpu_devices", "jit_compile",
              "knn_every_epochs", "knn_k", "knn_temperature", "knn_train_examples",
              "knn_eval_examples", "projector_examples", "checkpoint_every_steps",
              "keep_checkpoints", "log_every_steps", "rankme_examples"},
    "method_params": set(),
}


def _reason(e):
    return os.strerror(e.errno) if e.errno else str(e)


def check_writable_dir(path, flag):
    """Raises :class:`UserError` unless ``path`` is (or can be made) a writable directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--{flag}={path} is a file, not a directory; pass a directory.")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(os.path.abspath(parent))
    if not os.path.isdir(parent):
        raise UserError(f"--{flag}={path}: {parent} is a file, not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--{flag}={path} is not writable ({parent}: permission denied "
                        "or read-only file system); pass a directory you can write.")


def check_writable_file(path, flag):
    """Raises :class:`UserError` unless ``path`` can be (re)written."""
    directory = os.path.dirname(os.path.abspath(path))
    check_writable_dir(directory, flag)
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory; --{flag} needs to write a file there.")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"{path} is not writable; fix its permissions or use another "
                        f"--{flag}.")


def write_text(path, text):
    """Writes ``path`` atomically (temporary file + rename); OSError on failure."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class RunLock:
    """An exclusive lock on a run directory for the life of a training process."""

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.created = []
        self._fd = None

    def acquire(self):
        check_writable_dir(self.model_dir, "model_dir")
        missing, path = [], os.path.abspath(self.model_dir)
        while not os.path.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        try:
            os.makedirs(self.model_dir, exist_ok=True)
            self.created = missing
            lock = os.path.join(self.model_dir, LOCK_FILE)
            self._fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"--model_dir={self.model_dir} is not writable "
                            f"({_reason(e)}); pass a directory you can write.") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip()
            os.close(self._fd)
            self._fd = None
            raise UserError(
                f"--model_dir={self.model_dir} is in use by another training run "
                f"({holder or 'unknown process'}); wait for it to end or use another "
                "--model_dir.") from None
        info = f"pid {os.getpid()} on {socket.gethostname()} since " + time.strftime(
            "%Y-%m-%d %H:%M:%S")
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, info.encode(), 0)
        except OSError:
            pass  # informational only
        return self

    def release(self, refused=False):
        """Drops the lock; with ``refused``, removes the folders this run created if
        they hold nothing but the lock file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if refused and self.created:
            if set(os.listdir(self.model_dir)) <= {LOCK_FILE}:
                os.remove(os.path.join(self.model_dir, LOCK_FILE))
                for path in self.created:  # deepest first
                    try:
                        os.rmdir(path)
                    except OSError:
                        break

    def __enter__(self):
        return self.acquire()

    def __exit__(self, exc_type, exc, tb):
        self.release(refused=exc_type is not None)


def read_config_dict(model_dir, config_file):
    """The run's ``config.json`` as a dict, ``None`` if absent; UserError if invalid."""
    path = os.path.join(model_dir, config_file)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; restore it from a copy, or "
                        "remove the run directory to start over.") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {_reason(e)}.") from None


def _flag_name(group, name, params_flags):
    if group == "method_params":
        return "--" + params_flags.get(name, name)
    return f"--{name}"


def resume_conflicts(previous, current, params_flags):
    """The settings of ``current`` (a config dict) that differ from the run's.

    ``params_flags`` maps the method's param names to their flags
    (:func:`tfssl.config.flag_names`).

    Returns:
      ``["--backbone: run resnet18, this command resnet10", ...]``: every field
      outside :data:`RESUMABLE` whose value differs. ``mixed_precision`` may switch
      between ``none`` and ``mixed_bfloat16`` only (``mixed_float16`` adds
      loss-scale state to the optimizer).
    """
    out = []
    for group, values in current.items():
        if not isinstance(values, dict):
            continue
        old_values = previous.get(group, {})
        for name, value in sorted(values.items()):
            if name not in old_values:
                continue  # a setting added since the run started: its default applies
            old = old_values[name]
            if isinstance(old, list):
                old = tuple(old)
            if isinstance(value, list):
                value = tuple(value)
            if name == "mixed_precision" and group == "train":
                if (old == "mixed_float16") == (value == "mixed_float16"):
                    continue
            elif name in RESUMABLE.get(group, ()) or old == value:
                continue
            out.append(f"{_flag_name(group, name, params_flags)}: run "
                       f"{_show(old)}, this command {_show(value)}")
    return out


def _show(v):
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return str(v)
