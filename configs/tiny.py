"""A seconds-long run of the pipeline on random-weight tiny models (tests, smoke).

  python -m lis_jax.main --config=configs/tiny.py --workdir=/tmp/lis_tiny

A random classifier is never right, so every generated sample is kept.
"""
from configs import linear


def get_config():
  config = linear.get_config()
  # Random models have no labelled masks: quantify and report are left out (tests/
  # test_label_pipeline.py runs linear's full list on these models and stops at quantify).
  config.stages = ("paired_data", "link", "sweep", "counterfactual")
  config.generator = "sgxl-tiny"
  config.classifier = "tiny-resnet-random"
  config.classes = "1,2,3"

  config.paired_data.n_per_class = 48  # 144 pairs: more than the 65 OLS unknowns per w dim
  config.paired_data.keep_only_correct = False
  config.paired_data.batch_size = 16
  config.paired_data.shard_size = 16

  config.link.cycle_samples = 8

  config.sweep.units = "0:6"
  config.sweep.samples_per_class = 2
  config.sweep.units_per_block = 2
  config.sweep.batch_size = 8

  config.counterfactual.samples_per_pair = 2
  config.counterfactual.max_steps = 20
  config.counterfactual.check_every = 5
  config.counterfactual.batch_size = 8
  config.counterfactual.top_units = 4

  # Used once labelled masks exist (tests/test_label_pipeline.py labels a few).
  config.quantify.n_labelled = 4
  config.quantify.resolution = 0  # the generator's own 32 px
  config.quantify.layers = "all"
  config.quantify.head = "XS"
  config.quantify.epochs = 3
  config.quantify.samples_per_unit = 2
  config.quantify.null_draws = 4  # random directions of the null (quantify needs >= 2)
  config.quantify.batch_size = 16
  config.quantify.n_boot = 50
  config.plan_at_start = False  # the tests run many short runs; `--plan` still prints it
  return config
