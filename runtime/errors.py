"""The errors the runtime raises on purpose. Each message says what is wrong and what to do.

The CLI prints them as one `error: ...` line and exits non-zero; any other exception is a bug.
"""


class RuntimeSetupError(RuntimeError):
    """A model cannot be loaded or driven as asked (wrong bundle, wrong GPU, missing package...)."""


class MissingPackageError(RuntimeSetupError, ImportError):
    """A backend's Python package is not installed."""

    def __init__(self, what: str, module: str, pip: str, error: Exception | None = None):
        why = f" ({error})" if error else ""
        super().__init__(f"{what} needs the Python module {module!r}, which cannot be imported{why}. "
                         f"Install it with:\n  {pip}")


def import_or_explain(module: str, what: str, pip: str):
    """The module, or a MissingPackageError saying what needs it and how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackageError(what, module, pip, e) from None


class InputSizeError(RuntimeSetupError, ValueError):
    """Frames of a size the loaded model was not built for."""

