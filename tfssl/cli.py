"""Shared entry-point plumbing: quiet TensorFlow, one-line user errors."""

import os
import sys


def quiet_tensorflow():
    """Silences TensorFlow's C++ start-up chatter (before TF is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
