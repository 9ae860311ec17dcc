"""The paper's setup with a Ridge link instead of OLS.

  python -m lis_jax.main --config=configs/ridge.py --workdir=DIR
"""
from configs import linear


def get_config():
  config = linear.get_config()
  config.link.kind = "ridge"
  return config
