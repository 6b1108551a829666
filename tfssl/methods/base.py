"""The momentum-contrast base: owner of the one ``train_step``.

A method subclasses :class:`MomentumMethod` and declares

* ``params_cls`` — a frozen dataclass of its hyper-parameters (flags are made from
  it with the prefix ``flag_prefix``);
* ``build_heads()`` — its networks and state, made with the helpers below
  (``build_tower`` for the projector / predictor and their momentum copies,
  ``memory_bank`` for queues, ``mlp`` for other heads);
* ``view_specs()`` — the views each example is turned into;
* the step in three parts (see :meth:`MomentumMethod.compute_losses`):

  - ``forward(views, step) -> dict`` — every tensor the objective needs, by name
    (embeddings, predictions, keys, the queue snapshots it read);
  - ``objective(out, step) -> {"loss": ..., "<term>": ...}`` — scalars only, from
    ``out``;
  - ``commit(out, step)`` — state written after the objective (enqueues, group
    updates);

* optionally ``terms``: plug-in :class:`Term` classes that read the method's
  ``out`` and add weighted terms (ReCo's relation terms on MoCo-v2 and BYOL), and
  ``after_step(step)`` for periodic in-graph work and ``summaries()`` for extra
  TensorBoard values;
* ``default_batch_norm`` (what ``--batch_norm=auto`` means for it) and, if every
  momentum-encoder forward pass goes through ``momentum_forward`` (``forward_target``
  does), ``supports_shuffle_bn = True``.

Mixed precision: layers compute in the run's dtype policy (float16 / bfloat16) on
float32 variables; everything a method computes from their outputs (normalised
embeddings, logits, softmax, losses, queues, group features) is float32 because
``l2_normalize`` and the losses cast their inputs first.

Everything else — the tape, replica loss scaling, the optimizer built on the online
variables only, the EMA update after the optimizer step, the schedules, the in-step
random seeds and the metric names — lives here, once.
"""

import threading

import keras
import tensorflow as tf

from tfssl import schedules
from tfssl.data import device_augment
from tfssl.errors import UserError
from tfssl.losses import l2_normalize
from tfssl.methods.memory_bank import MemoryBank, check_queue_size
from tfssl.methods.momentum import MomentumPair
from tfssl.methods.shuffle_bn import shuffled_apply
from tfssl.models import precision
from tfssl.models.heads import build_mlp
from tfssl.models import applications
from tfssl.models.resnet import build_backbone
from tfssl.registry import Registry

METHODS = Registry("method")

#: Random streams folded into ``(--seed, step)`` by :meth:`MomentumMethod.random_seed`;
#: one constant per kind of in-step draw, so two kinds never share a seed.
SHUFFLE_STREAM = 7727  # shuffling-BN permutations


class Term:
    """A plug-in loss term on a :class:`MomentumMethod` (listed in its ``terms``).

    A term reads what the host method's :meth:`~MomentumMethod.forward` returned and
    adds ``weight · value`` to the loss, without copying the host's code:

    * ``build(method)`` — create its own networks, queues or heads (on ``method``,
      so they are checkpointed with it);
    * ``view_specs(method)`` — extra views it needs, appended after the host's
      (and after earlier terms'); they are ``views[self.view_offset:]`` in its
      ``forward``;
    * ``forward(method, views, out, step) -> dict`` — extra tensors, merged into
      ``out`` (may run forward passes, e.g. of an extra view); ``views`` is every
      view of the step, the host's first;
    * ``objective(method, out, step) -> dict`` — its scalars; the one named
      ``name`` is the term's loss, added to ``"loss"`` times ``weight``;
    * ``commit(method, out, step)`` — its state writes, after the host's;
    * ``images(method, views)`` — ``{name: [N, H, W, 3]}`` images to show in
      TensorBoard for the run's first batch (computed eagerly, at step 0).

    ``weight(method)`` reads the weight from the method's params; a term whose weight
    is 0 is not built at all (no variables, no forward passes), so the
    method then computes exactly its host's numbers.
    """

    name = ""
    view_offset = 0  # set by the method: the index of this term's first own view

    def weight(self, method):
        return 1.0

    def build(self, method):
        return None

    def view_specs(self, method):
        return ()

    def forward(self, method, views, out, step):
        return {}

    def objective(self, method, out, step):
        raise NotImplementedError

    def commit(self, method, out, step):
        return None

    def images(self, method, views):
        return {}


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
    # What --batch_norm=auto means for the method (with more than one replica).
    default_batch_norm = "sync"
    # Plug-in Term classes whose weighted objectives are added to the loss.
    terms = ()
    # Whether every momentum-encoder forward goes through momentum_forward, so
    # that --batch_norm=shuffle can shuffle it.
    supports_shuffle_bn = False

    def __init__(self, config, steps_per_epoch, mean=(0.5,) * 3, std=(0.5,) * 3,
                 **kwargs):
        problem = self.check_config(config)
        if problem:
            raise UserError(problem)
        super().__init__(name=kwargs.pop("name", self.method_name or "method"),
                         **kwargs)
        self.run_config = config
        self.params = config.method_params
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = config.total_steps(self.steps_per_epoch)
        self._momentum_pairs = []
        keras.utils.set_random_seed(config.train.seed)
        m = config.model
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        self.batch_norm = self.batch_norm_mode(m.batch_norm, replicas)
        if m.backbone.startswith(applications.PREFIX):
            self.backbone = applications.build_application(
                m.backbone[len(applications.PREFIX):], mean=mean, std=std,
                sync_bn=self.batch_norm == "sync", fused_bn=m.fused_batch_norm,
                model_name="backbone")
        else:
            self.backbone = build_backbone(
                m.backbone, stem=m.stem, width=m.width,
                image_size=config.data.image_size, mean=mean, std=std,
                sync_bn=self.batch_norm == "sync", fused_bn=m.fused_batch_norm,
                model_name="backbone")
        self.feature_dim = int(self.backbone.output["pooled"].shape[-1])
        self._momentum_schedule = schedules.momentum_schedule(
            config.train.momentum_schedule, config.train.momentum,
            self.total_steps)
        # Momentum-encoder forwards of the step being traced (their shuffle index),
        # per thread: MirroredStrategy traces each replica's step in its own thread.
        self._trace_state = threading.local()
        self.build_heads()
        self._terms = [t for t in (cls() for cls in self.terms) if t.weight(self) != 0]
        for term in self._terms:
            term.build(self)
        self.input_view_specs()  # sets each term's view_offset
        self._online_variables = None
        # Steps taken. Equal to optimizer.iterations, except that mixed_float16
        # skips the update of a step whose gradients overflow; the stream position
        # and every step-dependent schedule of the method follow this counter, so a
        # resumed run continues exactly.
        self.steps_taken = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False,
            autocast=False, aggregation="only_first_replica", name="steps_taken")

    @classmethod
    def check_config(cls, config):
        """What in the run's ``config`` the method cannot run with, as one line
        naming the flag and the fix, or ``None``. Checked when the flags are read
        (before any work) and again when the model is built (library use)."""
        return None

    @classmethod
    def batch_norm_mode(cls, choice, replicas):
        """The BN mode of ``--batch_norm=choice`` with ``replicas`` replicas.

        ``"auto"`` is the class's ``default_batch_norm``.  With one replica the mode
        is always ``"local"`` (plain BN): Keras' synchronised path is slower on one
        device and there is nothing to synchronise or shuffle.

        Returns:
          ``"sync"``, ``"shuffle"`` or ``"local"``.

        Raises:
          UserError: ``shuffle`` for a method that does not support it.
        """
        mode = cls.default_batch_norm if choice == "auto" else choice
        if mode == "shuffle" and not cls.supports_shuffle_bn:
            raise UserError(
                f"--batch_norm=shuffle is not available for --method={cls.method_name}"
                " (it has no momentum-encoder branch to shuffle); use "
                "--batch_norm=sync, local or auto.")
        return mode if replicas > 1 else "local"

    # -- helpers for subclasses -------------------------------------------------

    def mlp(self, input_dim, hidden_dims, output_dim, name, batch_norm=True,
            last_bn=False):
        """An MLP head with the run's BN synchronisation setting."""
        return build_mlp(input_dim, hidden_dims, output_dim, batch_norm=batch_norm,
                         last_bn=last_bn, sync_bn=self.batch_norm == "sync",
                         fused_bn=self.run_config.model.fused_batch_norm,
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

    def memory_bank(self, dim, name="queue", size=None, stream=None):
        """A :class:`MemoryBank` of ``size`` (default ``--queue_size``) entries;
        a second queue of a method passes another ``stream`` (its initial content
        then differs from the first's)."""
        size = size or self.run_config.train.queue_size
        check_queue_size(size, self.run_config.train.global_batch_size)
        kwargs = {} if stream is None else {"stream": stream}
        return MemoryBank(size, dim, seed=self.run_config.train.seed, name=name,
                          **kwargs)

    def build_tower(self, predictor=False, projector_last_bn=False):
        """The online tower and its momentum copy.

        Online: ``self.backbone`` (``f``), ``self.proj`` (``g``, :meth:`projector`)
        and, with ``predictor``, ``self.pred`` (``q``, :meth:`predictor`; else
        ``None``). Momentum (EMA) copies: ``self.target_backbone``,
        ``self.target_proj``. :meth:`forward_online` and :meth:`forward_target` run
        them.
        """
        self.proj = self.projector(last_bn=projector_last_bn)
        self.pred = self.predictor() if predictor else None
        self.target_backbone = self.momentum_target(self.backbone)
        self.target_proj = self.momentum_target(self.proj)

    @staticmethod
    def tower_forward(x, backbone, projector, predictor=None, training=True):
        """One forward through a tower: ``[B, H, W, 3]`` -> a dict of

        * ``pooled`` ``[B, C]`` and ``feature_map`` ``[B, h, w, C]`` (``f(x)``),
        * ``projection`` ``h = g(f(x))`` (compute dtype),
        * ``embedding`` ``norm(h)`` (float32, unit rows),
        * ``prediction`` ``q(h)`` (compute dtype; only with a ``predictor``).

        Outputs nothing uses cost nothing: TensorFlow prunes them from the step.
        """
        features = backbone(x, training=training)
        h = projector(features["pooled"], training=training)
        out = {"pooled": features["pooled"], "feature_map": features["feature_map"],
               "projection": h, "embedding": l2_normalize(h)}
        if predictor is not None:
            out["prediction"] = predictor(h, training=training)
        return out

    def encode(self, x, backbone, projector, training=True):
        """``norm(g(f(x)))`` through the given networks: float32 ``[B, d]``."""
        return self.tower_forward(x, backbone, projector, training=training)[
            "embedding"]

    def forward_online(self, x):
        """:meth:`tower_forward` through ``f, g`` (and ``q`` if the tower has one),
        BN in training mode."""
        return self.tower_forward(x, self.backbone, self.proj, self.pred)

    def forward_target(self, x, step, outputs=("embedding",)):
        """The momentum tower ``f_t, g_t`` on ``x`` through :meth:`momentum_forward`:
        ``{name: tensor}`` for each of ``outputs`` (keys of :meth:`tower_forward`).

        Only the outputs asked for are computed and, under shuffling BN, gathered
        across replicas. BN runs in training mode (batch statistics), or with
        ``--ema_bn`` (EMAN) in inference mode on the averaged moving statistics.
        """
        training = not self.run_config.train.ema_bn

        def fn(images):
            out = self.tower_forward(images, self.target_backbone, self.target_proj,
                                     training=training)
            return {k: out[k] for k in outputs}

        return self.momentum_forward(fn, x, step)

    def target_embedding(self, x):
        """``norm(g_t(f_t(x)))`` on the local batch (no shuffling), BN as in
        :meth:`forward_target`: float32 ``[B, d]``."""
        return self.encode(x, self.target_backbone, self.target_proj,
                           training=not self.run_config.train.ema_bn)

    def momentum_forward(self, fn, x, step, index=None):
        """``fn(x)`` for a momentum-encoder branch (``fn`` = the target networks).

        With ``batch_norm == "shuffle"`` ``fn`` runs on a shuffled chunk of the
        global batch (:func:`shuffle_bn.shuffled_apply`; ``fn`` may return a nested
        structure of ``[B, ...]`` tensors) seeded by :meth:`shuffle_seed`. ``index``
        tells apart the calls of one step: by default the calls are numbered 0, 1,
        ... in the order the step makes them. With ``--ema_bn`` the momentum
        network's BN does not look at the batch, so nothing is shuffled. Otherwise
        this is ``fn(x)``.
        """
        calls = getattr(self._trace_state, "momentum_calls", 0)
        if index is None:
            index = calls
        self._trace_state.momentum_calls = max(calls, index + 1)
        if self.batch_norm != "shuffle" or self.run_config.train.ema_bn:
            return fn(x)
        return shuffled_apply(fn, x, self.shuffle_seed(step, index))

    def random_seed(self, step, stream=None, index=None):
        """``[2]`` int64 stateless seed for a random draw inside the step.

        ``(--seed, step)``, with ``stream`` (a module constant per kind of draw, e.g.
        :data:`SHUFFLE_STREAM`) and then ``index`` (which draw of that kind in the
        step) folded in when given. A pure function of its arguments: identical on
        every replica (each replica draws the same numbers, so global-batch
        operations agree) and on resume. Use it with ``tf.random.stateless_*``.
        """
        seed = tf.stack([tf.constant(self.run_config.train.seed, tf.int64),
                         tf.cast(step, tf.int64)])
        if stream is not None:
            seed = tf.random.experimental.stateless_fold_in(seed, stream)
        if index is not None:
            seed = tf.random.experimental.stateless_fold_in(seed, index)
        return seed

    def shuffle_seed(self, step, index=0):
        """Seed of the shuffling-BN permutation of momentum forward ``index``."""
        return self.random_seed(step, SHUFFLE_STREAM, index)

    @property
    def momentum_pairs(self):
        return tuple(self._momentum_pairs)

    # -- subclass API -----------------------------------------------------------

    def build_heads(self):
        raise NotImplementedError

    def view_specs(self):
        """The method's own views of one example: a tuple of :class:`views.ViewSpec`
        (its ``forward`` receives these)."""
        raise NotImplementedError

    def input_view_specs(self):
        """Every view the step reads: :meth:`view_specs`, then each plug-in term's
        own (the input pipeline makes these)."""
        specs = tuple(self.view_specs())
        for term in self._terms:
            term.view_offset = len(specs)
            specs += tuple(term.view_specs(self))
        return specs

    def first_batch_images(self, views):
        """``{name: images}`` to show for the run's first batch (TensorBoard): the
        plug-in terms' (a method may override this and add its own)."""
        out = {}
        for term in self._terms:
            out.update(term.images(self, tuple(views)) or {})
        return out

    def forward(self, views, step):
        """Every tensor the objective needs, by name (see the module docstring)."""
        raise NotImplementedError

    def objective(self, out, step):
        """``{"loss": scalar, "<term>": scalar, ...}`` from ``forward``'s ``out``."""
        raise NotImplementedError

    def commit(self, out, step):
        """State written after the objective (enqueues, group updates)."""
        return None

    def compute_losses(self, views, step):
        """``forward``, plug-in terms' forwards, ``objective`` plus the weighted
        terms, then ``commit`` and the terms' commits; returns the scalars.

        Everything here runs inside the step's gradient tape; the queue snapshots a
        forward reads are taken before ``commit`` writes, so a method's losses never
        see the keys of its own step.
        """
        self._trace_state.momentum_calls = 0
        own = len(self.view_specs()) if self._terms else len(views)
        out = dict(self.forward(tuple(views[:own]), step))
        for term in self._terms:
            out.update(term.forward(self, views, out, step) or {})
        scalars = dict(self.objective(out, step))
        for term in self._terms:
            values = term.objective(self, out, step)
            scalars["loss"] = scalars["loss"] + term.weight(self) * values[term.name]
            scalars.update(values)
        self.commit(out, step)
        for term in self._terms:
            term.commit(self, out, step)
        return scalars

    def monitor_images(self, images):
        """``{name: [1, H, W, 3]}`` pictures of a fixed batch of evaluation
        ``images`` (``[N, S, S, 3]`` in ``[0, 1]``), drawn at every epoch end
        (LEWEL's alignment maps); none by default."""
        return {}

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
        if device_augment.is_device_batch(data):  # --augment_on=device
            data = device_augment.apply_views(data, self.input_view_specs())
        views = tuple(data) if isinstance(data, (tuple, list)) else (data,)
        step = tf.convert_to_tensor(self.steps_taken)
        variables = self.online_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            terms = self.compute_losses(views, step)
            # Times the dynamic loss scale under mixed_float16 (identity otherwise);
            # apply_gradients divides the gradients by it again.
            scaled = self.optimizer.scale_loss(terms["loss"] / replicas)
        grads = tape.gradient(scaled, variables)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            grads = precision.shared_overflow(grads)
        self.optimizer.apply_gradients(zip(grads, variables))
        momentum = self.momentum_at(step)
        for pair in self._momentum_pairs:
            pair.update(momentum)
        self.after_step(step)
        self.steps_taken.assign_add(1)
        logs = {k: tf.cast(v, tf.float32) for k, v in terms.items()}
        logs["learning_rate"] = tf.cast(self.optimizer.learning_rate, tf.float32)
        logs["momentum"] = tf.cast(momentum, tf.float32)
        return logs

    def call(self, inputs, training=False):
        """Pooled backbone features of ``inputs`` (for ``model(x)`` convenience)."""
        return self.backbone(inputs, training=training)["pooled"]


def get_method(name):
    return METHODS.get(name)

