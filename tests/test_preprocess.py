"""classifiers.preprocess against PIL (torchvision's eval transform path) and closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image

from lis_jax import classifiers
from lis_jax.classifiers.preprocess import resized_shape

# PIL rounds to uint8 after each of its two separable passes: at most one 8-bit level.
UINT8_MAX_ERR = 1.0 / 255 + 1e-6
# The same rounding, averaged over pixels, is about a quarter to a third of a level.
UINT8_MEAN_ERR = 0.4 / 255
# PIL's float32 ('F' mode) resize runs the same filter; only summation order and its
# coefficient arithmetic differ (measured max 0.003 / 255).
FLOAT_MAX_ERR = 0.01 / 255


def _images():
  rng = np.random.default_rng(0)
  astronaut = skimage.data.astronaut()                                   # 512 x 512
  return {
      "astronaut-512": astronaut,                                         # downscale x2
      "chelsea-300x451": skimage.data.chelsea(),                          # non-integer, wide
      "noise-333x500": rng.integers(0, 256, (333, 500, 3), dtype=np.uint8),
      "noise-460x300": rng.integers(0, 256, (460, 300, 3), dtype=np.uint8),  # tall
      "astronaut-128": np.asarray(Image.fromarray(astronaut).resize((128, 128))),  # upscale
      "noise-256": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),   # no resize
  }


IMAGES = _images()


def _torchvision_size(h, w, size=256):
  # torchvision.transforms.Resize(int): shorter side -> size, longer int(size * long / short).
  return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


def _crop(a, crop=224):
  h, w = a.shape[:2]
  top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
  return a[top:top + crop, left:left + crop]


def _pil_uint8(u8):
  """torchvision's PIL path up to ToTensor: Resize(256) (BILINEAR) -> CenterCrop(224) -> /255."""
  h, w = u8.shape[:2]
  nh, nw = _torchvision_size(h, w)
  im = Image.fromarray(u8)
  if (nh, nw) != (h, w):
    im = im.resize((nw, nh), Image.BILINEAR)
  return _crop(np.asarray(im).astype(np.float32) / 255)


def _pil_float(u8):
  """The same resize by PIL in float32 ('F' mode, one channel at a time): no 8-bit rounding."""
  h, w = u8.shape[:2]
  nh, nw = _torchvision_size(h, w)
  chans = [Image.fromarray(u8[..., c].astype(np.float32) / 255, mode="F") for c in range(3)]
  if (nh, nw) != (h, w):
    chans = [c.resize((nw, nh), Image.BILINEAR) for c in chans]
  return _crop(np.stack([np.asarray(c) for c in chans], -1))


def _ours(u8):
  img = u8.astype(np.float32) / 127.5 - 1.0                  # the [-1, 1] generator convention
  return np.asarray(classifiers.preprocess(img[None], mean=(0, 0, 0), std=(1, 1, 1))[0])


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_matches_pil_float_resize(name):
  u8 = IMAGES[name]
  np.testing.assert_allclose(_ours(u8), _pil_float(u8), rtol=0, atol=FLOAT_MAX_ERR)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_matches_pil_uint8_path(name):
  u8 = IMAGES[name]
  err = np.abs(_ours(u8) - _pil_uint8(u8))
  assert err.max() <= UINT8_MAX_ERR, err.max() * 255
  assert err.mean() <= UINT8_MEAN_ERR, err.mean() * 255


@pytest.mark.parametrize("hw", [(256, 256), (512, 512), (300, 451)])
def test_quantize_matches_reference_uint8_conversion(hw):
  # The reference: ((img + 1) * 127.5).clamp(0, 255).to(torch.uint8) -> PIL -> Resize/Crop.
  rng = np.random.default_rng(1)
  img = rng.uniform(-1.1, 1.1, (1, *hw, 3)).astype(np.float32)        # a little out of range
  u8 = np.clip((img[0] + 1) * 127.5, 0, 255).astype(np.uint8)          # astype truncates too
  want = _pil_uint8(u8)
  got = np.asarray(classifiers.preprocess(img, mean=(0, 0, 0), std=(1, 1, 1), quantize=True)[0])
  assert np.abs(got - want).max() <= UINT8_MAX_ERR
  if hw == (256, 256):                                                  # no resize: exact
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  # Straight-through: the gradient is the one of the continuous path.
  f = lambda q: lambda im: classifiers.preprocess(im, quantize=q).sum()
  np.testing.assert_allclose(np.asarray(jax.grad(f(True))(img)), np.asarray(jax.grad(f(False))(img)),
                             rtol=1e-6)


@pytest.mark.parametrize("hw,expected", [((256, 256), (256, 256)), ((300, 451), (256, 384)),
                                          ((460, 300), (392, 256)), ((64, 64), (256, 256))])
def test_resized_shape_follows_torchvision(hw, expected):
  assert resized_shape(*hw, 256) == expected


def test_normalisation_closed_form():
  # A constant image c maps to ((c + 1) / 2 - mean) / std at every pixel, whatever the resize.
  c = 0.3
  x = classifiers.preprocess(jnp.full((2, 300, 280, 3), c))
  assert x.shape == (2, 224, 224, 3)
  want = ((c + 1) / 2 - np.array(classifiers.IMAGENET_MEAN)) / np.array(classifiers.IMAGENET_STD)
  np.testing.assert_allclose(np.asarray(x), np.broadcast_to(want, x.shape), rtol=0, atol=1e-5)


def test_jit_and_grad():
  img = jax.random.uniform(jax.random.key(0), (2, 128, 96, 3), minval=-1, maxval=1)
  eager = classifiers.preprocess(img)
  jitted = jax.jit(classifiers.preprocess)(img)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=0, atol=1e-6)
  # d/d img of sum(x): linear resize weights sum to one per output pixel, so the total
  # gradient mass is (crop pixels per channel) / (2 * std) -- the factor 2 from [-1, 1].
  g = jax.grad(lambda im: classifiers.preprocess(im).sum())(img)
  assert g.shape == img.shape
  want = 224 * 224 * (1 / (2 * np.array(classifiers.IMAGENET_STD)))
  np.testing.assert_allclose(np.asarray(g.sum(axis=(0, 1, 2))) / 2, want, rtol=1e-4)


def test_crop_larger_than_image_is_an_error():
  with pytest.raises(ValueError, match="centre-crop"):
    classifiers.preprocess(jnp.zeros((1, 64, 64, 3)), resize=None, crop=224)
