"""Shared entry-point plumbing: quiet TensorFlow, one-line user errors."""

import errno
import os
import sys


def quiet_tensorflow():
    """Silences TensorFlow's C++ start-up chatter; call before TF is imported.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (unless set) and imports TensorFlow with the
    process's stderr pointed at /dev/null: the import's absl log lines ("oneDNN
    custom operations are on ...", written before absl is initialised) ignore that
    variable. An import that fails still raises, with stderr restored.
    ``TF_CPP_MIN_LOG_LEVEL=0`` keeps everything.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# What a file system says when the user's disk or permissions are the problem.
_IO_FAULTS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
              "Permission denied")


def io_fault(error):
    """One line for an I/O failure the user can fix (full disk, permissions), else None.

    ``error`` is an ``OSError`` or a TensorFlow ``OpError`` (TensorFlow reports a full
    disk while writing a checkpoint or SavedModel as ``ResourceExhaustedError``).
    """
    if isinstance(error, OSError):
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                               errno.EPERM):
            return None
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{os.strerror(error.errno)}"
    message = getattr(error, "message", None) or str(error)
    for fault in _IO_FAULTS:
        if fault in message:
            path = message.split(";", 1)[0].rsplit("}", 1)[-1].strip()
            return f"{path}: {fault}" if path and path != message else fault
    return None


def run_main(main):
    """``absl.app.run(main)``: a bad flag, a :class:`UserError`, or a full disk /
    permission fault met while writing, is printed on one line and exits with
    status 2."""
    from absl import app

    from tfssl.errors import UserError

    def wrapped(argv):
        from tfssl.console import quiet_logs

        quiet_logs()
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted; re-run the same command to start again (a "
                  "training run resumes from its latest checkpoint).", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # noqa: BLE001 - re-raised unless it is an I/O fault
            line = io_fault(e)
            if line is None:
                raise
            print(f"error: cannot write: {line}. Free space or fix the permissions and "
                  "re-run the same command (a training run resumes from its latest "
                  "checkpoint).", file=sys.stderr)
            sys.exit(2)

    from tfssl.configs import expand_argv

    try:
        argv = expand_argv(sys.argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    def parse(args):
        # absl's own parser exits with status 1; a bad flag is a user error (2).
        from absl import flags

        try:
            return flags.FLAGS(args)
        except flags.Error as e:
            print(f"error: {e}. Pass --helpshort to list the flags.", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped, argv=argv, flags_parser=parse)
