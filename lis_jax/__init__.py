"""lis_jax: Linking in Style (Wehrheim, Osuna-Vargas, Kaschube, 2024) in JAX/Flax.

A linear linking network maps a classifier's penultimate representation into the
W space of a StyleGAN-XL generator, so that classifier units and decisions can be
seen as images, swept, measured and explained in batches.

    from lis_jax import generators, classifiers
    G = generators.load(path_or_builtin_name)
    clf = classifiers.load(path_or_builtin_name)

Importing this package never needs torch; only `converters/` does.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("generators", "classifiers")


def __getattr__(name):
  # Lazy submodule import keeps `import lis_jax` cheap.
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
