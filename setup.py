"""lis_jax: Linking in Style in JAX/Flax."""
import setuptools

setuptools.setup(
    name="lis_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of Linking in Style (Wehrheim et al., 2024)",
    packages=setuptools.find_packages(include=["lis_jax", "lis_jax.*", "converters", "converters.*"]),
    package_data={"lis_jax": ["assets/**/*", "assets/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "flax>=0.8",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "scipy",  # StyleGAN-XL: Kaiser filter design for specs built from hyperparameters
        "absl-py",
        "ml-collections",
        "pillow",
        "tqdm",
        "matplotlib",  # report plots (Agg backend, no display)
    ],
    extras_require={
        # torch is only needed by converters/ and their tests. Pinned: a bare
        # `torch` requirement pulls several GB of CUDA wheels on a CPU machine.
        "convert": ["torch==2.13.0"],
        "test": ["torch==2.13.0", "pytest", "scikit-learn", "chex", "scipy", "scikit-image",
                 "statsmodels==0.15.0",  # multipletests: the reference for BH q-values
                 # browser tests; 4.38: newer releases need a certifi the registry may lack
                 "selenium==4.38.0"],
    },
)
