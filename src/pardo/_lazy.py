"""Names a package exports but imports only on first use, as ``concurrent.futures`` does
for its process pool: ``import pardo`` stays cheap, and a pool worker process, started as
``python -m pardo._pool.worker``, does not load the executor it serves."""


def lazy_getattr(namespace: dict, where: dict):
    """A module ``__getattr__`` for the package whose globals are ``namespace``: the name
    ``name`` comes from the module ``where[name]`` (relative to the package), imported on
    first use and then kept in the package's globals."""
    package = namespace["__name__"]

    def __getattr__(name):
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
