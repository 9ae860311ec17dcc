"""The paper's setup: StyleGAN-XL ImageNet-256 + ResNet50, OLS link, the dog classes.

  python -m lis_jax.main --config=configs/linear.py --workdir=DIR
  python -m lis_jax.main --config=configs/linear.py --workdir=DIR --config.sweep.units=0,1,2

Needs converted checkpoints in DIR/checkpoints/ (the run stops at once, naming the
converter command, if they are missing):
  python -m converters.stylegan_xl --pkl imagenet256.pkl --out DIR/checkpoints/stylegan_xl_imagenet256
  python -m converters.torchvision --arch resnet50 --weights resnet50.pth --out DIR/checkpoints/resnet50
"""
import ml_collections

from lis_jax import stages


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stages = ("paired_data", "link", "sweep", "counterfactual")  # add quantify once labelled masks exist
  config.seed = 0  # root of every PRNG key (latents, split, search starts)

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

  # Every stage's section starts from its defaults (lis_jax/stages/<name>.py, the only
  # home of defaults); the lines below change only what the paper's setup changes.
  for name, stage in stages.REGISTRY.items():
    config[name] = stage.default_config()

  # quantify: the reference's segmenter and measurements (the defaults are sized for the
  # built-in world on a CPU).
  q = config.quantify
  q.labels = "seg_labels/dogs"  # in the workdir: w/*.npy, labels/*.npy, part_names.json
  q.n_labelled = 20  # labelled images the segmentation head trains on
  q.n_heldout = 0  # ground-truth worlds only; a label dir holds out what is left
  q.resolution = 128  # images and masks are segmented and measured at 128 px
  q.layers = "every_other"  # the reference: every other synthesis layer
  q.head = "S"  # the reference's FewShotCNN size
  q.epochs = 100  # reference training: Adam, one image per step
  q.lr = 1e-3
  q.lr_step_epochs = 50  # lr x lr_gamma every 50 epochs (torch StepLR)
  q.samples_per_unit = 10  # start samples measured per unit
  q.null_draws = 2  # random directions per (unit, start sample)
  q.batch_size = 32  # images per segment-and-measure call
  q.top_k = 10  # units listed per (part, metric) concept
  q.cards = 8  # unit cards in the report
  return config
