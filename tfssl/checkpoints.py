"""Checkpoints that are never lost, never half-read and never saved non-finite.

A run's ``checkpoints/`` directory holds ``ckpt-<step>.index`` / ``.data-*`` pairs
written by ``tf.train.CheckpointManager`` and its ``checkpoint`` state file. This
module reads that directory without trusting any one file:

* :func:`list_checkpoints` is the union of the state file's entries and the
  ``ckpt-*.index`` files on disk, so an unreadable or stale state file loses
  nothing (the manager would otherwise start from an empty list, restart the run
  at step 0 and rotate the intact checkpoints away);
* :func:`restore_newest` restores the newest checkpoint that reads back whole,
  falling back past truncated or bit-flipped ones (TensorFlow checks a CRC32C of
  every tensor and of every index block, so corruption raises instead of loading
  garbage), and refuses one whose variables do not match the model in either
  direction (``assert_consumed``) with a :class:`UserError`: an incompatible
  checkpoint is a different run, not a corrupt one;
* :func:`save` checks that every variable is finite before writing and turns
  write failures (disk full, permissions) into one-line errors.
"""

import glob
import os
import re
import shutil

import tensorflow as tf
from absl import logging

from tfssl.errors import UserError
from tfssl.run_dir import write_text

STATE_FILE = "checkpoint"
QUARANTINE = "corrupt"
_NAME = re.compile(r"^ckpt-(\d+)$")


def _step(prefix):
    match = _NAME.match(os.path.basename(prefix))
    return int(match.group(1)) if match else None


_STATE_LINE = re.compile(
    r'^(model_checkpoint_path|all_model_checkpoint_paths): "([^"]*)"$'
    r"|^(all_model_checkpoint_timestamps|last_preserved_timestamp): [-+0-9.eE]+$")


def read_state(directory):
    """The state file's checkpoint prefixes, or ``None`` when it is missing or unreadable.

    Parsed here (the manager's text format, one ``key: value`` a line) rather than
    by ``tf.train.get_checkpoint_state``, which logs a warning per call for a bad file.
    """
    path = os.path.join(directory, STATE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError):
        return None
    paths, latest = [], None
    for line in lines:
        match = _STATE_LINE.match(line)
        if not match:
            return None
        if match.group(1) == "all_model_checkpoint_paths":
            paths.append(match.group(2))
        elif match.group(1) == "model_checkpoint_path":
            latest = match.group(2)
    paths = paths or ([latest] if latest else [])
    return [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths if p]


def list_checkpoints(directory):
    """Prefixes of every checkpoint in ``directory``, oldest first (by step).

    The union of the state file's entries whose index file exists and every
    ``ckpt-<step>.index`` on disk.
    """
    found = {p[:-len(".index")] for p in glob.glob(os.path.join(directory, "ckpt-*.index"))}
    found |= {p for p in read_state(directory) or () if os.path.exists(p + ".index")}
    found = {p for p in found if _step(p) is not None}
    return sorted(found, key=_step)


def has_checkpoints(directory):
    return bool(list_checkpoints(directory))


class _Unreadable(Exception):
    pass


def _restore(make_checkpoint, prefix):
    """Restores ``prefix`` fully; raises :class:`_Unreadable` for a damaged file,
    ValueError / AssertionError when it does not match the model."""
    try:
        names = {name for name, _ in tf.train.list_variables(prefix)}
    except Exception as e:  # OpError, or IndexError from a truncated object graph
        raise _Unreadable(getattr(e, "message", None) or str(e)) from None
    checkpoint = make_checkpoint(names)
    try:
        status = checkpoint.restore(prefix)
    except (tf.errors.OpError, IndexError) as e:
        raise _Unreadable(getattr(e, "message", None) or str(e)) from None
    status.assert_consumed()


def restore_newest(make_checkpoint, directory, what="the run"):
    """Restores the newest readable checkpoint in ``directory``.

    Args:
      make_checkpoint: ``fn(saved_names) -> tf.train.Checkpoint`` over the model's
        objects; ``saved_names`` (the checkpoint's variable keys) lets it leave out
        objects that older checkpoints do not have.
      directory: the ``checkpoints/`` folder.
      what: how to name the run in messages.

    Returns:
      ``(prefix, unreadable)``: the restored checkpoint (``None`` when there is
      none) and the newer checkpoints skipped as unreadable, ``[(prefix, reason)]``.

    Raises:
      UserError: the newest readable checkpoint does not match the model (another
        architecture, method option or queue size), or every checkpoint is unreadable.
    """
    unreadable = []
    for prefix in reversed(list_checkpoints(directory)):
        try:
            _restore(make_checkpoint, prefix)
        except _Unreadable as e:
            reason = (str(e).strip().splitlines() or ["unreadable"])[0]
            unreadable.append((prefix, reason))
            logging.warning("checkpoint %s is unreadable: %s", prefix, reason)
            continue
        except (ValueError, AssertionError) as e:
            detail = str(e).strip().splitlines()[0][:200]
            raise UserError(
                f"{prefix} does not match the model this command builds ({detail}); "
                f"{what} was trained with other settings. Re-run with the settings in "
                "its config.json or use another --model_dir.") from None
        return prefix, unreadable
    if unreadable:
        raise UserError(
            f"every checkpoint in {directory} is unreadable (newest: "
            f"{unreadable[0][0]}: {unreadable[0][1]}); nothing was changed. Restore "
            "the files from a copy, or remove the directory to start over.")
    return None, unreadable


def quarantine(directory, prefixes):
    """Moves the files of ``prefixes`` into ``directory/corrupt/`` (kept, not deleted)."""
    target = os.path.join(directory, QUARANTINE)
    for prefix in prefixes:
        os.makedirs(target, exist_ok=True)
        for path in glob.glob(glob.escape(prefix) + ".*"):
            os.replace(path, os.path.join(target, os.path.basename(path)))


def repair(directory):
    """Makes ``directory`` safe for a CheckpointManager; returns what it did.

    Removes the ``*_temp`` folders of interrupted saves and, when the state file is
    unreadable or lists other checkpoints than the disk holds, keeps the bad file
    as ``checkpoint.corrupt`` and writes one that lists every checkpoint found.
    """
    done = []
    for temp in glob.glob(os.path.join(directory, "ckpt-*_temp*")):
        shutil.rmtree(temp, ignore_errors=True) if os.path.isdir(temp) else os.remove(temp)
        done.append(f"removed the interrupted save {temp}")
    prefixes = list_checkpoints(directory)
    state = read_state(directory)
    path = os.path.join(directory, STATE_FILE)
    if os.path.exists(path) and state is None:
        os.replace(path, path + ".corrupt")
        done.append(f"{path} was unreadable (kept as {path}.corrupt)")
    elif state is not None and sorted(state, key=lambda p: _step(p) or -1) == prefixes:
        return done
    if prefixes:
        # The manager's text format; with the timestamps it rotates them as usual.
        stamps = [os.path.getmtime(p + ".index") for p in prefixes]
        lines = [f'model_checkpoint_path: "{os.path.basename(prefixes[-1])}"']
        lines += [f'all_model_checkpoint_paths: "{os.path.basename(p)}"' for p in prefixes]
        lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in stamps]
        lines.append(f"last_preserved_timestamp: {min(stamps) - 1.0!r}")
        write_text(path, "\n".join(lines) + "\n")
        done.append(f"rewrote {path} to list {len(prefixes)} checkpoint(s)")
    return done


def non_finite(variables):
    """Names of the floating-point ``variables`` holding a NaN or an infinity."""
    bad = []
    for v in variables:
        if tf.as_dtype(v.dtype).is_floating and not bool(tf.reduce_all(tf.math.is_finite(v))):
            bad.append(v.path if hasattr(v, "path") else v.name)
    return bad


def save(manager, step, variables, flag_hint):
    """``manager.save(step)`` after checking ``variables`` are all finite.

    Raises:
      UserError: a non-finite variable (nothing is written, so the latest
        checkpoint stays the last finite state) or a failed write (disk full,
        permissions; TensorFlow writes into a temporary folder first, so the
        latest complete checkpoint is intact).
    """
    bad = non_finite(variables)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UserError(
            f"the weights became non-finite by step {step} ({shown}); nothing was "
            f"saved, the latest checkpoint ({manager.latest_checkpoint}) holds the "
            f"last finite state. {flag_hint}")
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
        reason = (getattr(e, "message", None) or str(e)).strip().splitlines()[0]
        if ";" in reason:  # "<temp file path>; No space left on device"
            reason = reason.rsplit(";", 1)[1].strip()
        raise UserError(
            f"could not write the checkpoint of step {step} in {manager.directory}: "
            f"{reason}. The latest complete checkpoint is {manager.latest_checkpoint}; "
            "free space (or fix the permissions) and re-run the same command to "
            "resume.") from None
