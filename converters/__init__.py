"""Torch-side readers that turn foreign checkpoints into lis_jax params."""
