"""Shared entry-point plumbing: quiet TensorFlow, one-line user errors."""

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


def run_main(main):
    """``absl.app.run(main)``, printing a :class:`UserError` on one line, exit 2."""
    from absl import app

    from tfssl.errors import UserError

    def wrapped(argv):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(wrapped)
