"""`python -m lis_jax.label suggest`: the part segmenter as a labelling assistant.

Trains the quantify stage's segmenter (its config section: layers, head, epochs, ...)
on the labels imported so far; measures it leave-some-out (k folds over the labelled
images: each fold is predicted by a head trained on the others; IoU from the pooled
confusion); then trains on all of them and writes its predictions for the images not
labelled yet as indexed PNGs (suggestions/<name>.png) that label.html opens as their
starting masks.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lis_jax import context, errors, io
from lis_jax.label import export, layout, masks
from lis_jax.quantify import segment


def _fit(G, ws, labels, part_names, c, key) -> segment.Segmenter:
  return segment.fit(G, ws, labels, part_names, layers=c.layers, size=c.head, key=key,
                     epochs=c.epochs, batch_size=c.train_batch, lr=c.lr,
                     weight_decay=c.weight_decay, lr_step_epochs=c.lr_step_epochs,
                     lr_gamma=c.lr_gamma)


def held_out_iou(G: Any, ws: jax.Array, labels: np.ndarray, part_names, c, folds: int,
                 key: jax.Array) -> dict:
  """k-fold held-out IoU over the labelled images (image j is in fold j % k).

  Returns {'iou': {part: x}, 'mean_iou': x, 'folds': k, 'n_images': M}; mean_iou None if
  fewer than 2 images or folds < 2.
  """
  m = labels.shape[0]
  k = min(folds, m)
  if k < 2:
    return {"iou": {}, "mean_iou": None, "folds": k, "n_images": m}
  conf = np.zeros((len(part_names),) * 2, np.int64)
  fold = np.arange(m) % k
  for f in range(k):
    tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
    seg = _fit(G, ws[tr], labels[tr], part_names, c, jax.random.fold_in(key, f))
    conf += segment.confusion(segment.predict_labels(seg, G, ws[te]), labels[te], len(part_names))
  iou = segment.iou_from_confusion(conf)
  return {"iou": {p: float(v) for p, v in zip(part_names, iou)},
          "mean_iou": float(np.nanmean(iou)), "folds": k, "n_images": m}


def suggest(ctx: context.RunContext, folds: int = 3) -> dict:
  """Evaluates, trains, writes suggestions and the page; returns the held-out IoU dict
  (`held_out_iou`) with 'n_suggested' added."""
  c = ctx.cfg("quantify")
  d = layout.label_dir(c.labels, ctx.workdir)
  meta = layout.read_export(d)
  part_names = layout.read_part_names(d)
  names = d.labelled_names()
  if not names:
    raise errors.PipelineError(f"no labels in {d.sub('labels')}: label some images in "
                                 f"{d.page} and run `python -m lis_jax.label import` first")
  G = ctx.G
  ws = segment.as_ws(np.stack([np.load(d.w(n)) for n in names]), G.num_ws)
  labels = np.stack([np.load(d.labels(n)) for n in names]).astype(np.int32)
  if labels.max() >= len(part_names):
    raise errors.PipelineError(f"{d.sub('labels')}: label {labels.max()} outside part_names.json "
                                 f"(0..{len(part_names) - 1}); import the masks again")
  ev = held_out_iou(G, ws, labels, part_names, c, folds, ctx.key("label_suggest", 0))
  seg = _fit(G, ws, labels, part_names, c, ctx.key("label_suggest", 1))
  labelled = set(names)
  todo = [n for n in meta["names"] if n not in labelled]
  for s in range(0, len(todo), c.batch_size):
    chunk = todo[s:s + c.batch_size]
    ws_u = segment.as_ws(np.stack([np.load(d.w(n)) for n in chunk]), G.num_ws)
    pred = segment.predict_labels(seg, G, ws_u, batch_size=c.batch_size)
    for name, p in zip(chunk, pred):
      with io.atomic_file(d.suggestion(name)) as f:
        f.write(masks.indexed_png(p, len(part_names)))
  export.write_page(d)
  return {**ev, "n_suggested": len(todo)}
