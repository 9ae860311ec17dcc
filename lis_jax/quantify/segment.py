"""Few-shot part segmentation on the generator's own synthesis features.

As the reference (kaschube-lab/LinkingInStyle: src/extract_feats_segmentation.py,
src/train_segmentation.py and the FewShotCNN of src/repurpose_gan/model.py): the
features of a chosen subset of synthesis layers (`G.synthesis_features(ws)`) are
upsampled (nearest) to the image size and concatenated; a small fully convolutional
head of dilated 3x3 convolutions with LeakyReLU(0.2) maps them to per-pixel part
logits; it is trained with Adam (lr 1e-3, L2 weight decay 1e-3 as torch's Adam adds
it, learning rate x0.1 every 50 epochs) and cross entropy on a handful of labelled
masks, one image per step.

The feature stack is never materialised: the head's first convolution is linear in its
input channels, so it is applied layer by layer (`head_logits`: each layer's features
upsampled, standardised and convolved with its slice of the kernel, the results summed),
and only the selected layers' features at their own resolution are kept
(`layer_features`). `feature_stack` + `apply_head` is the reference path (the
concatenated stack, as the reference builds it), used by tests to check the fast one. When
measuring (not training), a layer smaller than the image convolves at its own resolution
(`conv_upsampled`: the same sums up to float rounding).
Batches of the segmenter's calls come from the memory budget (lis_jax/memory.py).

Two additions: the features are standardised per channel with the mean / std of the
training features (stored with the head), which makes one learning rate fit layers of
very different scales; and training can use minibatches of several images.

Labelled masks come from
  * a directory (config `quantify.labels`) laid out as the reference's data/seg/train:
      <dir>/w/<name>.npy        ws [num_ws, w_dim] or w [w_dim] (broadcast over num_ws)
      <dir>/labels/<name>.npy   [H, W] int part label per pixel (0 = background)
      <dir>/part_names.json     ["background", "<part 1>", ...]  (index = label value)
  * or, on a generator with ground truth (the built-in world), `G.ground_truth(ws)`
    masks (argmax over parts) of seeded samples (`labels == 'ground_truth'`).
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lis_jax import errors
from lis_jax import io
from lis_jax import memory
from lis_jax.generators.base import GroundTruthWorld

CHECKPOINT_KIND = "part_segmenter"

# Dilations and hidden widths of the reference's FewShotCNN sizes; 'XS' and 'XXS' are
# smaller heads for the built-in world and CPU demos. 'XXS' (the demo's since issue 19's
# eleventh round) has XS's dilations, so its receptive field, with narrower layers: the
# part labels of 64 images at 64 px take 548 ms against XS's 950 ms (median of 5 calls,
# XLA:CPU, the AMD EPYC's 2 cores; `python benchmarks/bench_quantify.py --head XXS`
# times the head within the measuring). (32, 16, 16) was 500 ms but its held-out mean IoU on the
# world of tests/test_quantify_segment.py fell to 0.799, under the bar of 0.8; (32, 32, 16)
# reaches 0.847 there (README, eleventh round).
HEAD_DILATIONS = {
    "XXS": (1, 2, 4, 1),
    "XS": (1, 2, 4, 1),
    "S": (1, 2, 1, 2, 1),
    "M": (1, 2, 4, 1, 2, 4, 1),
    "L": (1, 2, 4, 8, 1, 2, 4, 8, 1),
}
HEAD_CHANNELS = {
    "XXS": (32, 32, 16),
    "XS": (64, 32, 32),
    "S": (128, 64, 64, 32),
    "M": (128, 64, 64, 64, 64, 32),
    "L": (128, 64, 64, 64, 64, 64, 64, 32),
}


class SegmentationError(ValueError):
  """Labelled masks or a segmenter checkpoint are missing or do not fit the generator."""


class FewShotHead(nn.Module):
  """Dilated 3x3 conv stack: features [N, H, W, C] -> part logits [N, H, W, num_parts].

  Attributes:
    num_parts: output classes (background included).
    size: 'XXS', 'XS', 'S', 'M' or 'L' (see HEAD_DILATIONS / HEAD_CHANNELS).
    start: the first convolution applied (1: the head after its first convolution and
      LeakyReLU, for `head_logits`, which applies that one layer by layer).
  """
  num_parts: int
  size: str = "S"
  start: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dilations = HEAD_DILATIONS[self.size]
    widths = HEAD_CHANNELS[self.size] + (self.num_parts,)
    for i, (d, c) in enumerate(zip(dilations, widths)):
      if i < self.start:
        continue
      x = nn.Conv(c, (3, 3), kernel_dilation=(d, d), padding=[(d, d), (d, d)], name=f"conv{i}")(x)
      if i < len(widths) - 1:
        x = nn.leaky_relu(x, 0.2)
    return x


# ----------------------------------------------------------------------------- features


def synthesis_order(names: Sequence[str]) -> tuple[str, ...]:
  """Layer names in synthesis order: 'input', then 'L<i>_...' by i, then the rest by name.

  Feature dicts come back from jit with their keys sorted as strings ('L10' before 'L2',
  'input' last); this restores the network's order, which 'every_other' counts in.
  """
  def key(name):
    m = re.match(r"L(\d+)(?:_|$)", name)
    return (0, 0, name) if name == "input" else (1, int(m.group(1)), name) if m else (2, 0, name)
  return tuple(sorted(names, key=key))


def select_layers(names: Sequence[str], spec: Any) -> tuple[str, ...]:
  """Which synthesis-feature layers to use.

  Args:
    names: the layers `G.synthesis_features` returns (any order; see synthesis_order).
    spec: 'all'; 'every_other' (the reference's `[::2]` over all synthesis layers, in
      synthesis order); or a comma string / sequence of layer names.
  Raises:
    SegmentationError: a named layer does not exist.
  """
  names = synthesis_order(names)
  if spec == "all":
    return names
  if spec == "every_other":
    return names[::2]
  wanted = tuple(s.strip() for s in spec.split(",")) if isinstance(spec, str) else tuple(spec)
  missing = [n for n in wanted if n not in names]
  if missing or not wanted:
    raise SegmentationError(f"feature layers {missing or wanted} not among the generator's "
                            f"synthesis features ({', '.join(names)})")
  return wanted


def feature_shapes(G: Any, spec: Any) -> dict[str, tuple[int, ...]]:
  """The shapes of one image's selected synthesis-feature layers ({name: (1, h, w, C)}, in
  `select_layers`' order), from `jax.eval_shape` (nothing is computed).

  Args:
    G: generator; spec: as `select_layers`' ('all', 'every_other' or names).
  """
  shapes = jax.eval_shape(G.synthesis_features, jnp.zeros((1, G.num_ws, G.w_dim), jnp.float32))
  return {n: tuple(shapes[n].shape) for n in select_layers(list(shapes.keys()), spec)}


def feature_stack(G: Any, ws: jax.Array, layers: Sequence[str], size: int) -> jax.Array:
  """Synthesis features of `layers`, nearest-upsampled to size x size and concatenated.

  Args:
    G: generator.
    ws: [N, num_ws, w_dim].
    layers: names of `G.synthesis_features(ws)` entries.
    size: output side (the image resolution).
  Returns:
    [N, size, size, sum of the layers' channels] float32.
  """
  feats = G.synthesis_features(ws)
  out = []
  for name in layers:
    f = feats[name].astype(jnp.float32)  # [N, h, w, C]
    out.append(jax.image.resize(f, (f.shape[0], size, size, f.shape[-1]), "nearest"))
  return jnp.concatenate(out, axis=-1)


def apply_head(params: Mapping[str, Any], feats: jax.Array, num_parts: int, size: str) -> jax.Array:
  """Standardises features with the stored statistics and applies the head -> logits."""
  x = (feats - params["feat_mean"]) / params["feat_std"]
  return FewShotHead(num_parts, size).apply({"params": params["head"]}, x)


def layer_features(G: Any, ws: jax.Array, layers: Sequence[str]) -> dict:
  """The selected layers' synthesis features at their own resolution.

  Args:
    G: generator; ws: [N, num_ws, w_dim]; layers: names of `G.synthesis_features` entries.
  Returns:
    {name: [N, h, w, C] float32} for the names in `layers`.
  """
  feats = G.synthesis_features(ws)
  return {name: feats[name].astype(jnp.float32) for name in layers}


def upsample(f: jax.Array, size: int) -> jax.Array:
  """[N, h, w, C] -> [N, size, size, C], nearest (as `feature_stack`)."""
  return jax.image.resize(f, (f.shape[0], size, size, f.shape[-1]), "nearest")


def head_logits(params: Mapping[str, Any], feats: Mapping[str, jax.Array], layers: Sequence[str],
                size: int, num_parts: int, head_size: str, lowres: bool = False) -> jax.Array:
  """`apply_head(params, feature_stack(...))` without the stack: part logits [N, size, size, P].

  The first convolution is a sum over input channels, so it runs layer by layer on each
  layer's upsampled, standardised features with that layer's slice of the kernel; only
  one layer is upsampled at a time. When the layers have fewer channels in all than the
  convolution has outputs, the (then smaller) stack is built instead.

  Args:
    params: {'head', 'feat_mean' [C], 'feat_std' [C]} (C = the layers' channels, in order).
    feats: `layer_features(G, ws, layers)`: {name: [N, h, w, C_l]}.
    layers: the order of the layers in the stack.
    size: the side the features are upsampled to.
    lowres: the first convolution of a layer smaller than `size` (by a whole factor) runs at
      the layer's own resolution (`conv_upsampled`; the same sums, in another order: float
      rounding only). Training keeps the reference order (False).
  """
  if params["feat_mean"].shape[0] <= HEAD_CHANNELS[head_size][0]:
    # Fewer feature channels than the first convolution's outputs: the stack is the
    # smaller intermediate (its per-layer partial sums would be larger).
    return apply_head(params, jnp.concatenate([upsample(feats[n], size) for n in layers], -1),
                      num_parts, head_size)
  conv0 = params["head"]["conv0"]
  d = HEAD_DILATIONS[head_size][0]
  acc, c0 = None, 0
  for name in layers:
    f = feats[name]
    c = f.shape[-1]
    k = conv0["kernel"][:, :, c0:c0 + c]
    if lowres and f.shape[1] < size and size % f.shape[1] == 0 and size % f.shape[2] == 0:
      y = conv_upsampled((f - params["feat_mean"][c0:c0 + c]) / params["feat_std"][c0:c0 + c], k, size, d)
    else:
      x = (upsample(f, size) - params["feat_mean"][c0:c0 + c]) / params["feat_std"][c0:c0 + c]
      y = jax.lax.conv_general_dilated(x, k, (1, 1), [(d, d), (d, d)], rhs_dilation=(d, d),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    acc, c0 = (y if acc is None else acc + y), c0 + c
  x = nn.leaky_relu(acc + conv0["bias"], 0.2)
  rest = {k: v for k, v in params["head"].items() if k != "conv0"}
  return FewShotHead(num_parts, head_size, start=1).apply({"params": rest}, x)


def _phase_maps(s: int, d: int) -> tuple[list, np.ndarray]:
  """Taps -d, 0, d of a row (or column) u = s a + phase of the upsampled image fall on low-res
  rows a + (phase + tap) // s: the distinct offset maps, and each phase's map index [s]."""
  maps = [tuple((u + o) // s for o in (-d, 0, d)) for u in range(s)]
  groups = sorted(set(maps))
  return groups, np.array([groups.index(m) for m in maps])


def _group_kernel(kernel: jax.Array, gy: tuple, gx: tuple) -> jax.Array:
  """The taps of a 3 x 3 kernel [3, 3, C, O] that fall on the same low-res offsets of a
  row map gy and a column map gx (`_phase_maps`), summed: [max - min + 1 of gy, .. of gx, C, O].

  Sums of slices and one stack, not `.at[].add` scatters: the same float sums in the same
  order (bit-identical kernels), and the demo's segment-and-measure call compiled in
  2.1 s instead of 3.6 s (XLA:CPU, batch 64, AMD EPYC).
  """
  taps = {}
  for ky, dy in enumerate(gy):
    for kx, dx in enumerate(gx):
      at = (dy - min(gy), dx - min(gx))
      taps[at] = kernel[ky, kx] if at not in taps else taps[at] + kernel[ky, kx]
  zero = jnp.zeros(kernel.shape[2:], kernel.dtype)
  return jnp.stack([jnp.stack([taps.get((a, b), zero) for b in range(max(gx) - min(gx) + 1)])
                    for a in range(max(gy) - min(gy) + 1)])


def conv_upsampled(x: jax.Array, kernel: jax.Array, size: int, d: int) -> jax.Array:
  """The 3 x 3 convolution (dilation d, zero padding d) of upsample(x, size), at x's resolution.

  Nearest upsampling by whole factors s: every output pixel of one phase (its position
  mod s) sees its taps on the same low-res offsets, so per pair of row and column offset
  maps (at most 3 x 3 distinct for d < s) one small convolution of x with the taps that
  share an offset summed ([2, 2] or smaller for d = 1) gives that phase's outputs; they are
  interleaved back. Zero padding at low resolution is the upsampled image's. The demo's head
  (layers of 4, 16, 32 and 64 px at 64 px): 693 -> 554 ms CPU per 64 images; its argmax
  labels were the same on every image the demo measures (quantify and boundary outputs
  bit-identical).

  Args:
    x: [N, h, w, C] (standardised) features; kernel: [3, 3, C, O]; size: a multiple of h and w.
  Returns:
    [N, size, size, O], equal to the convolution of the upsampled x up to float rounding.
  """
  n, h, w, _ = x.shape
  gys, iy = _phase_maps(size // h, d)
  gxs, ix = _phase_maps(size // w, d)
  p = max(abs(v) for g in gys + gxs for v in g)
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  rows = []
  for gy in gys:
    cols = []
    for gx in gxs:
      y0, x0 = min(gy), min(gx)
      k = _group_kernel(kernel, gy, gx)
      win = xp[:, p + y0:p + y0 + h + k.shape[0] - 1, p + x0:p + x0 + w + k.shape[1] - 1]
      cols.append(jax.lax.conv_general_dilated(win, k, (1, 1), "VALID",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC")))
    rows.append(jnp.stack(cols))
  y = jnp.stack(rows)[iy][:, ix]   # [s_y, s_x, N, h, w, O]
  return y.transpose(2, 3, 0, 4, 1, 5).reshape(n, size, size, -1)


def feature_moments(feats: Mapping[str, np.ndarray], layers: Sequence[str], size: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std [C] of the upsampled features, one layer and image at a time.

  Equals `feature_stack(...).mean((0, 1, 2))` / `.std((0, 1, 2))` (two passes, sums in
  float64) without the stack.
  """
  means, stds = [], []
  for name in layers:
    f = feats[name]
    n = f.shape[0] * size * size
    s = sum(np.asarray(_channel_sum(f[i:i + 1], size), np.float64) for i in range(f.shape[0]))
    mean = (s / n).astype(np.float32)
    ss = sum(np.asarray(_channel_sum(f[i:i + 1], size, mean), np.float64) for i in range(f.shape[0]))
    means.append(mean)
    stds.append(np.sqrt(ss / n).astype(np.float32))
  return np.concatenate(means), np.concatenate(stds)


@functools.partial(jax.jit, static_argnames=("size",))
def _channel_sum(f, size, centre=None):
  """Per-channel sum over pixels of upsample(f) [C], or of its squared deviation from centre."""
  u = upsample(jnp.asarray(f), size)
  return (u if centre is None else jnp.square(u - centre)).sum((0, 1, 2))


# ----------------------------------------------------------------------------- segmenter


class Segmenter:
  """A trained head plus what it needs to run: the layers, sizes and part names.

  `segmenter(G, ws)` -> part probabilities [N, H, W, P] for images `G.synthesis(ws)`.
  """

  def __init__(self, params: Mapping[str, Any], meta: Mapping[str, Any]):
    self.params = jax.tree_util.tree_map(jnp.asarray, params)
    self.meta = dict(meta)
    self.layers = tuple(meta["layers"])
    self.size = str(meta["size"])
    self.resolution = int(meta["resolution"])
    self.part_names = tuple(meta["part_names"])

  @property
  def num_parts(self) -> int:
    return len(self.part_names)

  def logits(self, G: Any, ws: jax.Array) -> jax.Array:
    """ws [N, num_ws, w_dim] -> part logits [N, H, W, P] (call under jit)."""
    return head_logits(self.params, layer_features(G, ws, self.layers), self.layers,
                       self.resolution, self.num_parts, self.size)

  def __call__(self, G: Any, ws: jax.Array) -> jax.Array:
    return jax.nn.softmax(self.logits(G, ws), axis=-1)

  def save(self, out_dir: str) -> None:
    io.save_checkpoint(out_dir, self.params, {**self.meta, "kind": CHECKPOINT_KIND})


def load(ckpt_dir: str) -> Segmenter:
  """Loads a segmenter saved by `Segmenter.save` (checks its parameter shapes)."""
  meta = io.load_meta(ckpt_dir)
  if meta.get("kind") != CHECKPOINT_KIND:
    raise io.CheckpointError(f"{ckpt_dir}: kind {meta.get('kind')!r} is not a {CHECKPOINT_KIND}")
  c = int(meta["in_channels"])
  head = jax.eval_shape(lambda: FewShotHead(len(meta["part_names"]), meta["size"]).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, c)))["params"])
  expected = {"head": head, "feat_mean": jax.ShapeDtypeStruct((c,), jnp.float32),
              "feat_std": jax.ShapeDtypeStruct((c,), jnp.float32)}
  params, meta = io.load_checkpoint(ckpt_dir, expected)
  return Segmenter(params, meta)


def train(feats: np.ndarray | Mapping[str, np.ndarray], labels: np.ndarray, *, num_parts: int,
          size: str, key: jax.Array, epochs: int = 100, batch_size: int = 1, lr: float = 1e-3,
          weight_decay: float = 1e-3, lr_step_epochs: int = 50, lr_gamma: float = 0.1,
          layers: Sequence[str] = (), stop: Any = None) -> tuple[dict, np.ndarray]:
  """Trains a FewShotHead on features and label maps (the reference's recipe by default).

  Args:
    feats: [M, H, W, C] feature stacks of the labelled images; or, with `layers`, their
      `layer_features` {name: [M, h, w, C_l]} (upsampled to H x W one layer at a time
      inside each step: the stack is never built).
    labels: [M, H, W] int labels in [0, num_parts).
    num_parts: P, output classes.
    size: head size ('XXS', 'XS', 'S', 'M', 'L').
    key: PRNG key (initialisation and the per-epoch shuffles).
    epochs: passes over the M images.
    batch_size: images per step (1 = the reference).
    lr, weight_decay: Adam learning rate and L2 penalty (added to the gradient, as torch).
    lr_step_epochs, lr_gamma: learning rate times lr_gamma every lr_step_epochs epochs.
    layers: the order of the layers in the stack, when `feats` is a dict.
    stop: a threading.Event; once set, `errors.Stopped` is raised at the next epoch
      (training started ahead of its stage: `Stage.early`).
  Returns:
    params {'head', 'feat_mean' [C], 'feat_std' [C]} (numpy leaves), and the mean
    training loss of each epoch [epochs].
  """
  labels = np.asarray(labels, np.int32)
  res = labels.shape[-1]
  if layers:   # Layer by layer: standardisation and the first convolution inside the step.
    x_all = {name: jnp.asarray(feats[name], jnp.float32) for name in layers}
    mean, std = feature_moments(x_all, layers, res)
    std = std + 1e-6
    shape = (x_all[layers[0]].shape[0], res, res, int(mean.shape[0]))
    stats = (jnp.asarray(mean), jnp.asarray(std))
    logits_fn = lambda p, x: head_logits({"head": p, "feat_mean": stats[0], "feat_std": stats[1]},
                                         x, layers, res, num_parts, size)
  else:
    feats = np.asarray(feats, np.float32)
    shape = feats.shape
    mean = feats.mean((0, 1, 2))
    std = feats.std((0, 1, 2)) + 1e-6
    x_all = jnp.asarray((feats - mean) / std)
    logits_fn = lambda p, x: model.apply({"params": p}, x)
  m = shape[0]
  if labels.shape != shape[:3]:
    raise SegmentationError(f"labels {labels.shape} do not match features {shape[:3]}")
  if labels.min() < 0 or labels.max() >= num_parts:
    raise SegmentationError(f"labels must lie in [0, {num_parts}), got [{labels.min()}, {labels.max()}]")
  batch_size = max(1, min(batch_size, m))
  y_all = jnp.asarray(labels)
  steps_per_epoch = m // batch_size
  model = FewShotHead(num_parts, size)
  init_key, shuffle_key = jax.random.split(key)
  # The kernels' shapes depend on the channels only: the same draws as on a full image.
  head = model.init(init_key, jnp.zeros((1, 8, 8, shape[-1]), jnp.float32))["params"]
  schedule = optax.exponential_decay(lr, transition_steps=lr_step_epochs * steps_per_epoch,
                                     decay_rate=lr_gamma, staircase=True)
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(),
                   optax.scale_by_learning_rate(schedule))
  opt_state = tx.init(head)

  def loss_fn(p, x, y):
    logits = logits_fn(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # A Python loop over jitted steps: on XLA:CPU, convolutions inside lax.scan run ~30x
  # slower than the same step called from Python.
  @jax.jit
  def step(p, s, idx, x_all, y_all):  # Data as arguments: never baked in as constants.
    x = jax.tree_util.tree_map(lambda a: a[idx], x_all)
    loss, g = jax.value_and_grad(loss_fn)(p, x, y_all[idx])
    upd, s = tx.update(g, s, p)
    return optax.apply_updates(p, upd), s, loss

  p, s, history = head, opt_state, []
  for e in range(epochs):
    if stop is not None and stop.is_set():
      raise errors.Stopped("segmenter training")
    order = jax.random.permutation(jax.random.fold_in(shuffle_key, e), m)
    losses = []
    for i in range(steps_per_epoch):
      p, s, loss = step(p, s, order[i * batch_size:(i + 1) * batch_size], x_all, y_all)
      losses.append(loss)
    history.append(jnp.mean(jnp.stack(losses)))
  carry = (p, s)
  params = {"head": carry[0], "feat_mean": mean, "feat_std": std.astype(np.float32)}
  return jax.tree_util.tree_map(np.asarray, params), np.asarray(jnp.stack(history))


# ----------------------------------------------------------------------------- evaluation


def confusion(pred: np.ndarray, truth: np.ndarray, num_parts: int) -> np.ndarray:
  """[P, P] counts of (truth, prediction) label pairs over all pixels."""
  idx = np.asarray(truth, np.int64).reshape(-1) * num_parts + np.asarray(pred, np.int64).reshape(-1)
  return np.bincount(idx, minlength=num_parts * num_parts).reshape(num_parts, num_parts)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
  """Per-part intersection over union [P] over a whole set of images (NaN if a part never occurs)."""
  inter = np.diag(conf).astype(np.float64)
  union = conf.sum(0) + conf.sum(1) - inter
  return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


# ----------------------------------------------------------------------------- labelled data


def load_label_dir(path: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Reads a labelled-mask directory (layout in the module docstring).

  Returns:
    ws-or-w list as an array [M, ...] (either [M, w_dim] or [M, num_ws, w_dim]),
    labels [M, H, W] int32, part names.
  Raises:
    SegmentationError: missing files, unpaired names, bad shapes or label values.
  """
  w_dir, l_dir = os.path.join(path, "w"), os.path.join(path, "labels")
  names_file = os.path.join(path, "part_names.json")
  for p in (w_dir, l_dir, names_file):
    if not os.path.exists(p):
      raise SegmentationError(f"labelled masks: {p} not found (expected {path}/w/*.npy, "
                              f"{path}/labels/*.npy and {path}/part_names.json)")
  with open(names_file) as f:
    part_names = tuple(json.load(f))
  names = sorted(n for n in os.listdir(l_dir) if n.endswith(".npy"))
  if not names:
    raise SegmentationError(f"labelled masks: no .npy files in {l_dir}")
  unpaired = [n for n in names if not os.path.exists(os.path.join(w_dir, n))]
  if unpaired:
    raise SegmentationError(f"labelled masks: no w for {unpaired[:5]} in {w_dir}")
  ws = [np.load(os.path.join(w_dir, n)) for n in names]
  labels = [np.load(os.path.join(l_dir, n)) for n in names]
  shapes = {np.shape(w) for w in ws}
  lshapes = {np.shape(l) for l in labels}
  if len(shapes) != 1 or len(lshapes) != 1 or len(next(iter(lshapes))) != 2:
    raise SegmentationError(f"labelled masks: inconsistent shapes (w {sorted(shapes)}, labels "
                            f"{sorted(lshapes)}); labels must be [H, W] int maps")
  labels = np.stack(labels).astype(np.int32)
  if labels.min() < 0 or labels.max() >= len(part_names):
    raise SegmentationError(f"labelled masks: label values must lie in [0, {len(part_names)}) "
                            f"(part_names.json), got [{labels.min()}, {labels.max()}]")
  return np.stack(ws).astype(np.float32), labels, part_names


def as_ws(w: np.ndarray, num_ws: int) -> jax.Array:
  """[M, w_dim] or [M, num_ws, w_dim] -> [M, num_ws, w_dim]."""
  w = jnp.asarray(w, jnp.float32)
  if w.ndim == 2:
    return jnp.broadcast_to(w[:, None], (w.shape[0], num_ws, w.shape[1]))
  if w.ndim == 3 and w.shape[1] == num_ws:
    return w
  raise SegmentationError(f"w of shape {tuple(w.shape)} is neither [M, w_dim] nor [M, {num_ws}, w_dim]")


def resize_images(img: jax.Array, size: int) -> jax.Array:
  """[N, H, W, C] -> [N, size, size, C], antialiased linear resampling (identity if H == size)."""
  if img.shape[1] == size and img.shape[2] == size:
    return img
  return jax.image.resize(img, (img.shape[0], size, size, img.shape[-1]), "linear", antialias=True)


def ground_truth_labels(G: Any, ws: jax.Array, size: int | None = None
                        ) -> tuple[np.ndarray, tuple[str, ...]]:
  """Label maps [M, size, size] (argmax of the true part coverage) and part names of G's world.

  size: label resolution (coverages are resampled first); None: G.resolution.
  """
  if not isinstance(G, GroundTruthWorld):
    raise SegmentationError("quantify.labels='ground_truth' needs a generator with ground truth "
                            "(the built-in world); point quantify.labels at a labelled-mask directory")
  truth = G.ground_truth(ws)
  masks = resize_images(truth["masks"], size or G.resolution)
  return np.asarray(jnp.argmax(masks, -1)).astype(np.int32), tuple(truth["part_names"])


def sample_ws(G: Any, classes: np.ndarray, n: int, psi: float, key: jax.Array) -> jax.Array:
  """n seeded ws, classes cycling through `classes`: [n, num_ws, w_dim]."""
  cls = jnp.asarray(np.resize(np.asarray(classes), n), jnp.int32)
  z = jax.random.normal(key, (n, G.z_dim))
  return G.mapping(z, cls, psi=psi)


def fit(G: Any, ws_train: jax.Array, labels_train: np.ndarray, part_names: Sequence[str], *,
        layers: Any, size: str, key: jax.Array, epochs: int, batch_size: int, lr: float,
        weight_decay: float, lr_step_epochs: int, lr_gamma: float,
        budget: memory.Budget | None = None, stop: Any = None) -> Segmenter:
  """Features of the labelled ws (each layer at its own resolution), a trained head, wrapped
  as a Segmenter. budget: the memory the feature calls may use (default: the device's);
  stop: as `train`'s."""
  names = list(jax.eval_shape(G.synthesis_features, ws_train[:1]).keys())
  layers = select_layers(names, layers)
  res = int(labels_train.shape[-1])
  fn = functools.partial(_features_jit, layers=layers)
  feats = memory.map_batches(fn, np.asarray(ws_train), int(ws_train.shape[0]), G,
                             budget=budget or memory.default_budget(), call="segmenter features",
                             setting="quantify.layers", stage="quantify")
  params, _ = train(feats, labels_train, num_parts=len(part_names), size=size, key=key, epochs=epochs,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                    lr_step_epochs=lr_step_epochs, lr_gamma=lr_gamma, layers=layers, stop=stop)
  meta = {"layers": list(layers), "size": size, "resolution": res, "part_names": list(part_names),
          "in_channels": int(params["feat_mean"].shape[0]), "n_labelled": int(labels_train.shape[0]),
          "epochs": epochs, "batch_size": batch_size}
  return Segmenter(params, meta)


@functools.partial(jax.jit, static_argnames=("layers",))
def _features_jit(G, ws, layers):
  return layer_features(G, ws, layers)


@functools.partial(jax.jit, static_argnames=("layers", "size", "num_parts", "head_size"))
def _predict(G, params, ws, layers, size, num_parts, head_size):
  logits = head_logits(params, layer_features(G, ws, layers), layers, size, num_parts, head_size, lowres=True)
  return jnp.argmax(logits, -1).astype(jnp.int32)


def predict_labels(seg: Segmenter, G: Any, ws: jax.Array, batch_size: int = 32,
                   budget: memory.Budget | None = None, setting: str = "quantify.batch_size"
                   ) -> np.ndarray:
  """Argmax part labels [N, H, W] int32 for `G.synthesis(ws)`, in fixed-size batches.

  batch_size: the most images per call; fewer when the memory budget (default: the
  device's, lis_jax/memory.py) holds fewer. setting: the config field named when even
  one image does not fit.
  """
  fn = functools.partial(_predict, layers=seg.layers, size=seg.resolution, num_parts=seg.num_parts,
                         head_size=seg.size)
  return memory.map_batches(fn, np.asarray(ws), batch_size, G, seg.params,
                            budget=budget or memory.default_budget(), call="segmenter predict",
                            setting=setting, stage="quantify")


def evaluate(seg: Segmenter, G: Any, ws: jax.Array, labels: np.ndarray) -> dict:
  """Per-part IoU over held-out images: {'iou': {part: x}, 'mean_iou': x, 'n_images': n}."""
  pred = predict_labels(seg, G, ws)
  iou = iou_from_confusion(confusion(pred, labels, seg.num_parts))
  return {"iou": {p: float(v) for p, v in zip(seg.part_names, iou)},
          "mean_iou": float(np.nanmean(iou)), "n_images": int(labels.shape[0]),
          "pixel_accuracy": float(np.mean(pred == labels))}
