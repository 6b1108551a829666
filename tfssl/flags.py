"""absl flags, made from the config dataclasses; read by entry points only.

Every field of :mod:`tfssl.config`'s dataclasses becomes a flag of the same name
(method hyper-parameters get their method's prefix, e.g. ``--ressl_tau_t``, or
the field's own ``flag_prefix``), with
the field's default and help text; enum-like fields become ``DEFINE_enum``.
:func:`run_config_from_flags` turns the parsed flags into a validated, frozen
:class:`tfssl.config.RunConfig`.
"""

import dataclasses

from absl import flags

from tfssl import config as config_lib
from tfssl.errors import UserError
from tfssl.methods import METHODS

GROUPS = {"data": config_lib.DataConfig, "model": config_lib.ModelConfig,
          "optim": config_lib.OptimConfig, "train": config_lib.TrainConfig}


def _define(cls, prefix, flag_values):
    """Defines a flag per field of ``cls``.

    A flag that exists already must come from a field with the same default, help
    and checks (a method whose params reuse a base method's fields then shares its
    flags); anything else raises ``ValueError`` at import: two definitions of one
    flag are a programming error, not something to skip silently.
    """
    for f in dataclasses.fields(cls):
        name = config_lib.flag_name(f, prefix)
        help_text = f.metadata.get("help", f.name)
        check = f.metadata.get("check")
        default = f.default
        choices = getattr(check, "choices", None)
        definition = (type(default), default, help_text,
                      tuple(choices) if choices is not None else None)
        if name in flag_values:
            existing = getattr(flag_values[name], "tfssl_definition", None)
            if existing != definition:
                where = (f"by another field (default {existing[1]!r}, help "
                         f"{existing[2]!r})" if existing else "outside tfssl's configs")
                raise ValueError(
                    f"flag --{name} of {cls.__name__}.{f.name} (default {default!r}, "
                    f"help {help_text!r}) is already defined {where}: give the field "
                    "another name or the class another flag_prefix.")
            continue
        if choices is not None and isinstance(default, str):
            flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, tuple):
            flags.DEFINE_list(name, [str(v) for v in default], help_text,
                              flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
        flag_values[name].tfssl_definition = definition


def define_flags(flag_values=flags.FLAGS):
    """Defines ``--model_dir`` and every config / method flag."""
    if "model_dir" not in flag_values:
        flags.DEFINE_string("model_dir", None, "Run directory (config.json, "
                            "checkpoints, TensorBoard logs, metrics.jsonl).",
                            flag_values=flag_values)
    if "config" not in flag_values:
        # Expanded into a --flagfile before parsing (tfssl.configs.expand_argv); defined
        # here so that --helpfull lists it.
        flags.DEFINE_string("config", None, "A shipped flagfile by name, e.g. "
                            "cifar10/ressl (configs/<dataset>/<method>.flags); works "
                            "from any directory and in an installed package.",
                            flag_values=flag_values)
    for cls in GROUPS.values():
        _define(cls, "", flag_values)
    for name in METHODS.names():
        method = METHODS.get(name)
        _define(method.params_cls, method.flag_prefix, flag_values)


def _values(cls, prefix, flag_values):
    out = {}
    for f in dataclasses.fields(cls):
        name = config_lib.flag_name(f, prefix)
        value = flag_values[name].value
        if isinstance(f.default, tuple):
            try:
                value = tuple(type(f.default[0])(v) for v in value)
            except ValueError:
                raise UserError(f"--{name}={','.join(value)} must be a "
                                "comma-separated list of numbers.") from None
        out[f.name] = value
    return cls(**out)


def run_config_from_flags(flag_values=flags.FLAGS):
    """The validated :class:`RunConfig` of the parsed flags."""
    if not flag_values.model_dir:
        raise UserError("--model_dir is required (the run directory).")
    method = METHODS.get(flag_values.method)
    parts = {k: _values(cls, "", flag_values) for k, cls in GROUPS.items()}
    config = config_lib.RunConfig(
        model_dir=flag_values.model_dir,
        method_params=_values(method.params_cls, method.flag_prefix, flag_values),
        **parts)
    config_lib.validate_run(config, method.flag_prefix)
    problem = method.check_config(config)
    if problem:
        raise UserError(problem)
    return config
