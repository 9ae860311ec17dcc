"""What a shift of the classifier's representation does to the generated image: shared by
the counterfactual stage (its image-domain search) and the boundary stage (its crossing
search)."""
from __future__ import annotations

from typing import Any

import jax

from lis_jax import generators


def image_logits(G: Any, clf: Any, link: Any, r_shifted: jax.Array) -> jax.Array:
  """The classifier's logits [B, C] on the image generated from link(relu(r_shifted)) [B, D]."""
  ws = generators.broadcast_ws(link(jax.nn.relu(r_shifted)), G.num_ws)
  return clf(clf.preprocess(G.synthesis(ws)))
