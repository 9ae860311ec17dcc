"""The paper's setup: StyleGAN-XL ImageNet-256 + ResNet50, OLS link, the dog classes.

  python -m lis_jax.main --config=configs/linear.py --workdir=DIR
  python -m lis_jax.main --config=configs/linear.py --workdir=DIR --config.sweep.units=0,1,2

Every stage runs, each at its defaults (`default_config()` in lis_jax/stages/<name>.py is
the paper's setting). Needs converted checkpoints in DIR/checkpoints/ (the run stops at
once, naming the converter command, if they are missing):
  python -m converters.stylegan_xl --pkl imagenet256.pkl --out DIR/checkpoints/stylegan_xl_imagenet256
  python -m converters.torchvision --arch resnet50 --weights resnet50.pth --out DIR/checkpoints/resnet50
and, for the quantify stage and those after it, labelled part masks in DIR/seg_labels/dogs
(the run stops at quantify, naming these, if they are missing):
  python -m lis_jax.label export --config=configs/linear.py --workdir=DIR --n=30
  (paint DIR/seg_labels/dogs/label.html in a browser, save the masks into DIR/seg_labels/dogs/masks)
  python -m lis_jax.label import --config=configs/linear.py --workdir=DIR
"""
import ml_collections

from lis_jax import stages


def get_config() -> ml_collections.ConfigDict:
  config = stages.default_sections()   # every stage's section at its defaults
  config.stages = tuple(stages.REGISTRY)   # every stage, in pipeline order
  config.seed = 0  # root of every random stream (docs/architecture.md)

  # Models: a checkpoint dir (relative paths are inside the workdir), a built-in name,
  # or "module:function" returning the object.
  config.generator = "checkpoints/stylegan_xl_imagenet256"
  config.classifier = "checkpoints/resnet50"
  config.checkpoint_hints = ml_collections.ConfigDict({  # shown when a checkpoint is missing
      "generator": "python -m converters.stylegan_xl --pkl imagenet256.pkl --out {path}",
      "classifier": "python -m converters.torchvision --arch resnet50 --weights resnet50.pth --out {path}",
  })
  config.classes = "dogs"  # a class group (dogs, fungi, birds, cars) or ids '232,254'
  config.psi = 0.7  # truncation toward the class's w_avg
  config.feature_layer = "reference"  # r: the reference's children()[:-1] output ('penultimate')
  config.quantize = True  # classify the reference's 8-bit image (straight-through gradient)
  # Memory (README "Memory and the plan"): batch sizes are maxima, lowered to fit.
  config.memory_gb = 0.0  # the memory budget in GiB; 0: the device's free memory
  config.plan_at_start = True  # the first lines of a run: its plan (images, FLOPs, memory, time)
  return config
