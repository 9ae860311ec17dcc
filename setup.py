"""lis_jax: Linking in Style in JAX/Flax.

Install with the versions the tests passed with (README, "Reproducibility"):
  pip install -c constraints.txt -e ".[test]"
After changing a requirement here, refresh the pins: python scripts/pin_versions.py > constraints.txt
"""
import setuptools

INSTALL_REQUIRES = [
    "jax>=0.4.30",
    "flax>=0.8",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "scipy",  # the link's float64 solve (QR + SVD); StyleGAN-XL's Kaiser filter design
    "absl-py",
    "ml-collections",
    "pillow",
    "tqdm",
    "matplotlib",  # report plots (Agg backend, no display)
]

EXTRAS_REQUIRE = {
    # torch is only needed by converters/ and their tests. Pinned: a bare
    # `torch` requirement pulls several GB of CUDA wheels on a CPU machine.
    "convert": ["torch==2.13.0"],
    "test": [
        "torch==2.13.0", "pytest", "scikit-learn", "chex", "scipy", "scikit-image",
        # browser tests; 4.38: newer releases need a certifi the registry may lack
        "selenium==4.38.0",
        "statsmodels==0.15.0",  # tests/test_analysis_calls.py: BH against multipletests
        # tests/test_notebook.py: runs notebooks/linking_in_style.ipynb in a fresh kernel
        "nbclient", "nbformat", "ipykernel",
        "pytest-xdist",  # scripts/test.sh runs the suite on 2 worker processes (README, "Tests")
        # More test dependencies go here, one a line; then refresh constraints.txt.
    ],
    # lpips==0.1.4 (tests/test_lpips.py, converters/lpips.py) is installed by scripts/test.sh
    # with --no-deps: it declares torchvision, whose wheels would replace the pinned CPU torch
    # with a CUDA build; the test gives it a stand-in torchvision.
}

setuptools.setup(
    name="lis_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of Linking in Style (Wehrheim et al., 2024)",
    packages=setuptools.find_packages(include=["lis_jax", "lis_jax.*", "converters", "converters.*"]),
    package_data={"lis_jax": ["assets/**/*", "assets/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
