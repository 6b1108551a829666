"""Methods register themselves on import; import this package to get them all."""

from tfssl.methods import (  # noqa: F401  (registration)
    byol, lewel, moco_v2, multinet, reco, ressl, smog)
from tfssl.methods.base import METHODS, MomentumMethod, get_method, register_method

__all__ = ["METHODS", "MomentumMethod", "get_method", "register_method"]
