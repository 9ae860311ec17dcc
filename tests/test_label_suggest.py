"""suggest's leave-some-out IoU: every labelled image is predicted once, by a head trained
without it, and the pooled IoU is scikit-learn's per-class Jaccard (heads stubbed: the
training itself is tested in test_quantify_segment.py and test_label_pipeline.py)."""
import jax
import numpy as np
import pytest
from sklearn.metrics import jaccard_score

from lis_jax.label import suggest

PARTS = ("background", "cap", "stem")


@pytest.mark.parametrize("m,folds", [(7, 3), (4, 4), (5, 9)])
def test_held_out_iou_k_fold(monkeypatch, m, folds):
  rng = np.random.default_rng(m)
  labels = rng.integers(0, len(PARTS), (m, 8, 8))
  preds = np.where(rng.random(labels.shape) < 0.3, rng.integers(0, len(PARTS), labels.shape), labels)
  ws = np.broadcast_to(np.arange(m, dtype=np.float32)[:, None, None], (m, 2, 4))  # ws[i] holds i
  trained_on, predicted = [], []

  def fake_fit(G, ws_tr, labels_tr, part_names, c, key):
    ids = np.asarray(ws_tr[:, 0, 0]).astype(int)
    np.testing.assert_array_equal(labels_tr, labels[ids])
    trained_on.append(set(ids.tolist()))
    return set(ids.tolist())

  def fake_predict(seg, G, ws_te, batch_size=32):
    ids = np.asarray(ws_te[:, 0, 0]).astype(int)
    assert not seg & set(ids.tolist())  # never an image the head was trained on
    predicted.extend(ids.tolist())
    return preds[ids]

  monkeypatch.setattr(suggest, "_fit", fake_fit)
  monkeypatch.setattr(suggest.segment, "predict_labels", fake_predict)
  ev = suggest.held_out_iou(None, ws, labels, PARTS, None, folds, jax.random.PRNGKey(0))
  k = min(folds, m)
  assert ev["folds"] == k and ev["n_images"] == m and len(trained_on) == k
  assert sorted(predicted) == list(range(m))  # each image held out exactly once
  want = jaccard_score(labels.ravel(), preds.ravel(), average=None, labels=range(len(PARTS)))
  np.testing.assert_allclose([ev["iou"][p] for p in PARTS], want, rtol=1e-12)
  assert ev["mean_iou"] == pytest.approx(want.mean(), rel=1e-12)


def test_held_out_iou_needs_two_images():
  ev = suggest.held_out_iou(None, np.zeros((1, 2, 4)), np.zeros((1, 8, 8), int), PARTS, None, 3, None)
  assert ev["mean_iou"] is None and ev["folds"] == 1
