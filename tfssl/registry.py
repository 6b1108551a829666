"""Name -> object registries that fail loudly (after Model Garden's registry)."""

from tfssl.errors import UserError


class Registry:
    """A dict of named entries.

    Registering a name twice raises ``KeyError`` (a programming error); looking up
    an unknown name raises :class:`UserError` listing the known names (a user error:
    the name came from a flag).
    """

    def __init__(self, kind, flag=None):
        self._kind = kind
        self._flag = flag or kind
        self._entries = {}

    def register(self, name):
        """Decorator registering ``obj`` under ``name``."""

        def decorator(obj):
            if name in self._entries:
                raise KeyError(f"{self._kind} {name!r} is already registered "
                               f"(by {self._entries[name]!r}).")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"--{self._flag}={name} is not a known {self._kind}; known: "
                f"{', '.join(sorted(self._entries))}.") from None

    def names(self):
        return tuple(sorted(self._entries))

    def __contains__(self, name):
        return name in self._entries
