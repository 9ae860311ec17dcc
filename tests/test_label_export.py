"""Export on the tiny random generator: seeded per image (batch size and resuming do not
change a file), more images later keep the old ones, another config is refused."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

sys.path.insert(0, str(ROOT))  # configs/ is not an installed package.
from configs import tiny  # noqa: E402
from lis_jax import errors, images, stages  # noqa: E402
from lis_jax.label import export, layout  # noqa: E402


def _ctx(workdir, **flat):
  config = tiny.get_config()
  config.update_from_flattened_dict(flat)
  return stages.context(config, str(workdir))


def test_export_is_seeded_resumable_and_refuses_another_config(tmp_path):
  ctx = _ctx(tmp_path)
  d = export.export(ctx, 3, batch_size=2)
  names = layout.read_export(d)["names"]
  assert names == [f"s{i:04d}_c{c:04d}" for i in range(3) for c in (1, 2, 3)]
  ws = {n: np.load(d.w(n)) for n in names}
  # The stored ws regenerate the stored image (the reference's uint8 rule).
  img = np.asarray(Image.open(d.image(names[4])))
  np.testing.assert_array_equal(img, images.to_uint8(np.asarray(ctx.G.synthesis(ws[names[4]][None])))[0])
  assert Image.open(d.image_small(names[4])).size == (ctx.G.resolution,) * 2  # resolution 0: G's
  # A killed export leaves some images without ws: they are made again, identically,
  # whatever the batch size.
  for n in names[2:5]:
    os.remove(d.w(n))
  before = {n: os.path.getmtime(d.w(n)) for n in names if os.path.exists(d.w(n))}
  export.export(_ctx(tmp_path), 4, batch_size=5)
  for n in names:
    np.testing.assert_array_equal(np.load(d.w(n)), ws[n])
  assert all(os.path.getmtime(d.w(n)) == t for n, t in before.items())  # done ones untouched
  more = layout.read_export(d)["names"]
  assert more[:len(names)] == names and len(more) == 12
  with pytest.raises(errors.PipelineError, match="psi"):
    export.export(_ctx(tmp_path, psi=0.5), 4)
