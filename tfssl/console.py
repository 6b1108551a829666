"""What the command-line tools print: a progress bar on a terminal, plain lines
elsewhere, and no TensorFlow / absl INFO chatter.

* On a terminal (``sys.stdout.isatty()``) training shows Keras' progress bar.
* Anywhere else (CI logs, ``nohup``, a pipe) a bar's carriage-return redraws turn
  into thousands of lines, so :class:`LineProgress` prints one line every
  ``every`` steps and at the end of the epoch instead.
* :func:`quiet_logs` keeps absl / TensorFlow Python logging at WARNING (unless
  ``--verbosity`` was given); :func:`tfssl.cli.quiet_tensorflow` silences the C++
  start-up lines.
"""

import sys
import time


class LineProgress:
    """Progress of one epoch as plain lines: ``epoch E step s/N: k v ... (x s/step)``.

    Same ``update(current, values)`` as ``keras.utils.Progbar``.
    """

    def __init__(self, target, epoch, every, stream=None):
        self.target, self.epoch, self.every = int(target), int(epoch), max(int(every), 1)
        self.stream = stream or sys.stdout
        self.started, self.first = time.perf_counter(), None

    def update(self, current, values=()):
        if self.first is None:
            self.first = current - 1
        if current % self.every and current != self.target:
            return
        done = max(current - self.first, 1)
        rate = (time.perf_counter() - self.started) / done
        terms = " ".join(f"{k} {float(v):.4g}" for k, v in values)
        print(f"epoch {self.epoch} step {current}/{self.target}: {terms} "
              f"({rate:.3f} s/step)", file=self.stream, flush=True)


def progress(target, epoch, every, verbose=1, stateful=()):
    """Keras' bar on a terminal, :class:`LineProgress` otherwise (``verbose`` 0:
    nothing)."""
    if verbose and sys.stdout.isatty():
        import keras

        return keras.utils.Progbar(target, verbose=verbose, stateful_metrics=stateful)
    if verbose:
        return LineProgress(target, epoch, every)
    return _Silent()


class _Silent:
    def update(self, current, values=()):
        return None


def quiet_logs():
    """absl / TensorFlow Python logging at WARNING, unless ``--verbosity`` (or
    ``-v``) was passed. Call after the flags are parsed."""
    from absl import flags, logging

    if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    tf.get_logger().setLevel("WARNING")
