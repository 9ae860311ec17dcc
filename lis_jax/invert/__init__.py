"""Real images into the generator's W: `python -m lis_jax.invert` and its library.

    from lis_jax import invert, lpips
    res = invert.project(G, clf, lpips.load(DIR), targets, key=jax.random.key(0))

projector.py: the batched, jitted W projection (StyleGAN-XL's `run_inversion.project`);
photos.py: reading image files (EXIF orientation, centre crop, resize; bad files refused);
__main__.py: the command line (resumable per image).
"""
from lis_jax.invert.projector import Projection, default_config, project  # noqa: F401
