"""Readers of PyTorch-side weights (StyleGAN-XL snapshot pickles, torchvision state_dicts).

The only place in the project that imports torch. Each converter is a pure function from
a source file or state_dict to a params pytree, driven by an explicit name table, and a
command line (`python -m converters.<name>`) that writes a lis_jax checkpoint directory.
"""
