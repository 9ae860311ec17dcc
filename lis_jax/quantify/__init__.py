"""Quantification: what changes in the generated images when a unit is swept.

  metrics.py      per-image, per-part measures (area, luminance, entropy, colour, ellipses)
  segment.py      few-shot part segmentation on generator features
  selectivity.py  per-unit changes with bootstrap intervals, random-direction null, ranking

The pipeline's 'quantify' stage and its report section: lis_jax/stages/quantify.py.
"""
