"""The momentum-contrast base: owner of the one ``train_step``.

A method subclasses :class:`MomentumMethod` and declares

* ``params_cls`` — a frozen dataclass of its hyper-parameters (flags are made from
  it with the prefix ``flag_prefix``);
* ``build_heads()`` — its projector / predictor / target networks / queues, made
  with the helpers below (``momentum_target``, ``memory_bank``, ``mlp``);
* ``view_specs()`` — the views each example is turned into;
* ``compute_losses(views, step) -> {"loss": ..., "<term>": ...}``;
* optionally ``after_step(step)`` for periodic in-graph work and
  ``summaries()`` for extra TensorBoard values.

Everything else — the tape, replica loss scaling, the optimizer built on the online
variables only, the EMA update after the optimizer step, the schedules and the
metric names — lives here, once.
"""

import keras
import tensorflow as tf

from tfssl import schedules
from tfssl.losses import l2_normalize
from tfssl.methods.memory_bank import MemoryBank, check_queue_size
from tfssl.methods.momentum import MomentumPair
from tfssl.models.heads import build_mlp
from tfssl.models.resnet import build_backbone, feature_dim
from tfssl.registry import Registry

METHODS = Registry("method")


def register_method(name):
    """Class decorator: registers a :class:`MomentumMethod` subclass as ``name``."""

    def decorator(cls):
        cls.method_name = name
        return METHODS.register(name)(cls)

    return decorator


class MomentumMethod(keras.Model):
    """Base of every method: a backbone, heads, momentum targets and one step.

    Args:
      config: the run's :class:`tfssl.config.RunConfig`.
      steps_per_epoch: optimizer steps per epoch (for the schedules).
      mean, std: per-channel input normalisation of the dataset.
    """

    params_cls = None
    flag_prefix = ""
    method_name = ""
    # Whether the projector MLP normalises its hidden layer (MoCo-v2: no).
    projector_batch_norm = True

    def __init__(self, config, steps_per_epoch, mean=(0.5,) * 3, std=(0.5,) * 3,
                 **kwargs):
        super().__init__(name=kwargs.pop("name", self.method_name or "method"),
                         **kwargs)
        self.run_config = config
        self.params = config.method_params
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = config.total_steps(self.steps_per_epoch)
        self._momentum_pairs = []
        keras.utils.set_random_seed(config.train.seed)
        m = config.model
        # Keras' synchronized BN path costs ~2x on one device: only use it when
        # there is something to synchronise.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.sync_bn = bool(m.sync_bn and replicas > 1)
        self.backbone = build_backbone(
            m.backbone, stem=m.stem, width=m.width,
            image_size=config.data.image_size, mean=mean, std=std,
            sync_bn=self.sync_bn, model_name="backbone")
        self.feature_dim = feature_dim(m.backbone, m.width)
        self._momentum_schedule = schedules.momentum_schedule(
            config.train.momentum_schedule, config.train.momentum,
            self.total_steps)
        self.build_heads()
        self._online_variables = None

    # -- helpers for subclasses -------------------------------------------------

    def mlp(self, input_dim, hidden_dims, output_dim, name, batch_norm=True,
            last_bn=False):
        """An MLP head with the run's BN synchronisation setting."""
        return build_mlp(input_dim, hidden_dims, output_dim, batch_norm=batch_norm,
                         last_bn=last_bn, sync_bn=self.sync_bn,
                         model_name=name)

    def projector(self, name="projector", last_bn=False):
        """The default projector ``g``: ``proj_layers`` Dense layers."""
        m = self.run_config.model
        hidden = [m.proj_hidden_dim] * (m.proj_layers - 1)
        return self.mlp(self.feature_dim, hidden, m.proj_dim, name,
                        batch_norm=self.projector_batch_norm, last_bn=last_bn)

    def predictor(self, name="predictor"):
        """The default predictor ``q``: Dense-BN-ReLU-Dense at ``proj_dim``."""
        m = self.run_config.model
        return self.mlp(m.proj_dim, [m.pred_hidden_dim], m.proj_dim, name)

    def momentum_target(self, online):
        """Registers ``online`` for EMA and returns its target copy."""
        pair = MomentumPair(online, ema_bn=self.run_config.train.ema_bn)
        self._momentum_pairs.append(pair)
        return pair.target

    def memory_bank(self, dim, name="queue", size=None):
        """A :class:`MemoryBank` of ``size`` (default ``--queue_size``) entries."""
        size = size or self.run_config.train.queue_size
        check_queue_size(size, self.run_config.train.global_batch_size)
        return MemoryBank(size, dim, seed=self.run_config.train.seed, name=name)

    def encode(self, x, backbone, projector, training=True):
        """``norm(g(f(x)))``: ``[B, H, W, 3]`` -> ``[B, d]``."""
        return l2_normalize(projector(backbone(x, training=training)["pooled"],
                                      training=training))

    @property
    def momentum_pairs(self):
        return tuple(self._momentum_pairs)

    # -- subclass API -----------------------------------------------------------

    def build_heads(self):
        raise NotImplementedError

    def view_specs(self):
        """The views of one example: a tuple of :class:`views.ViewSpec`."""
        raise NotImplementedError

    def compute_losses(self, views, step):
        """Returns ``{"loss": scalar, "<term>": scalar, ...}`` for local batches."""
        raise NotImplementedError

    def after_step(self, step):
        """In-graph work after the EMA update (``step`` = the step just taken)."""
        return None

    def summaries(self):
        """Extra TensorBoard values read on the host at log steps (name -> tensor;
        rank 0 -> scalar, else histogram). SMoG's group occupancy goes here."""
        return {}

    # -- the step ---------------------------------------------------------------

    @property
    def online_variables(self):
        """Trainable variables of everything except the momentum targets."""
        if self._online_variables is None:
            target_ids = {id(v) for p in self._momentum_pairs
                          for v in p.target.trainable_variables}
            self._online_variables = [v for v in self.trainable_variables
                                      if id(v) not in target_ids]
        return self._online_variables

    def momentum_at(self, step):
        """EMA momentum at ``step`` (constant or cosine to 1)."""
        return self._momentum_schedule(step)

    def build_optimizer_state(self):
        """Builds the optimizer on the online variables only (TF_NOTES)."""
        if not self.optimizer.built:
            self.optimizer.build(self.online_variables)

    def train_step(self, data):
        views = tuple(data) if isinstance(data, (tuple, list)) else (data,)
        step = tf.cast(self.optimizer.iterations, tf.int64)
        variables = self.online_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = self.compute_losses(views, step)
            scaled = terms["loss"] / replicas
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        momentum = self.momentum_at(step)
        for pair in self._momentum_pairs:
            pair.update(momentum)
        self.after_step(step)
        logs = {k: tf.cast(v, tf.float32) for k, v in terms.items()}
        logs["learning_rate"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        logs["momentum"] = tf.cast(momentum, tf.float32)
        return logs

    def call(self, inputs, training=False):
        """Pooled backbone features of ``inputs`` (for ``model(x)`` convenience)."""
        return self.backbone(inputs, training=training)["pooled"]


def get_method(name):
    return METHODS.get(name)

