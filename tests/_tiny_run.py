"""A shorter whole run of configs/tiny.py through `python -m lis_jax.main`, for the tests
that check what such a run does as a whole (tests/test_pipeline_e2e.py: killed and resumed;
tests/test_label_pipeline.py: linear's stage list stops at quantify).

Every stage still runs in full; only the number of sweep blocks and counterfactual searches
is smaller (neither test's claim depends on how many there are). The block and batch sizes
are configs/tiny.py's (units_per_block 2, counterfactual batch_size 8), and both tests pass
the same overrides, so their runs compile the same programs and share them through the
session's compilation cache (tests/conftest.py).
"""

SWEEP_UNITS = "0:2"   # one sweep block (configs/tiny.py: '0:6', 3 blocks)
SAMPLES_PER_PAIR = 1  # 6 searches (3 classes: 6 ordered pairs), one batch of 8 (tiny.py: 2, 12)
FLAT = {"sweep.units": SWEEP_UNITS, "counterfactual.samples_per_pair": SAMPLES_PER_PAIR}
ARGS = tuple(f"--config.{k}={v}" for k, v in FLAT.items())   # the same, as main's overrides
