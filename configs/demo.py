"""The offline demo: every stage on the built-in 'shapes' world, then an HTML report.

  python -m lis_jax.main --config=configs/demo.py --workdir=/tmp/lis_demo
  open /tmp/lis_demo/report/index.html

No downloads and no converted checkpoints: the generator is the built-in 'shapes' world
(8 part-based object classes, known ground truth) and the classifier the shipped
'shapes-resnet' (128 units). Meant to take under 5 minutes on 2 CPU cores: 3 min 47 s -
4 min 31 s where the README first timed it; on the slower machine of its latest timings
5 min 51 s with the 'XXS' segmenter head, against 6 min 44 s - 6 min 45 s with 'XS'
(README, Quick start). Every stage runs, as in configs/linear.py; the lines below are all
that differs from it: the models, the classes, the sizes and the quantify settings
(tests/test_configs.py checks that nothing else does).
"""
from configs import linear


def get_config():
  config = linear.get_config()
  config.generator = "shapes"
  config.classifier = "shapes-resnet"
  config.classes = "0,1,2,3,4,5,6,7"  # all 8 classes of the world
  config.quantize = False  # 'shapes-resnet' was trained on the continuous image

  config.paired_data.n_per_class = 750  # 6000 pairs for a 128 -> 64 linear fit
  config.paired_data.batch_size = 128
  config.paired_data.shard_size = 256

  config.link.cycle_samples = 128

  config.sweep.samples_per_class = 4  # 32 start samples
  config.sweep.starts = "paired"  # the demo's numbers (README) use these starts and range
  config.sweep.range = "minmax"
  config.sweep.n_steps = 5
  config.sweep.units_per_block = 16
  config.sweep.batch_size = 128

  config.counterfactual.samples_per_pair = 2  # 56 ordered class pairs -> 112 searches
  config.counterfactual.max_steps = 1000
  config.counterfactual.batch_size = 56
  config.counterfactual.compact_rows = 14  # the last 14 searches checked alone (same results; stage CPU 85 -> 29 s)

  config.quantify.labels = "ground_truth"  # the world's own part masks
  config.quantify.n_heldout = 64  # held-out images for the segmenter's IoU
  config.quantify.resolution = 0  # segment and measure at the world's own 64 px (no upsampling)
  config.quantify.layers = "all"  # the world's 4 feature layers
  config.quantify.head = "XXS"  # XS's dilations, widths 32/32/16: 0.55 s per 64 images, XS 0.95 s (README)
  config.quantify.epochs = 40
  config.quantify.lr = 3e-3
  config.quantify.lr_step_epochs = 30
  config.quantify.samples_per_unit = 16  # of the 32 start samples, two per class (README: precision@5)
  config.quantify.concepts = "calibrated"  # metrics that track the world's factors (README)
  config.quantify.average = "hl"  # Hodges-Lehmann of a unit's changes over its start samples (the paper: mean; README)
  config.quantify.batch_size = 64
  config.quantify.top_k = 5
  config.quantify.cards = 6

  # invariances: a small flow for the world's 64-d w (about 30 s on 2 cores)
  config.invariances.n_blocks = 4
  config.invariances.hidden = 128
  config.invariances.depth = 1
  config.invariances.embed_dim = 32
  config.invariances.embed_hidden = 128
  config.invariances.epochs = 20  # of the 5400 train pairs
  config.invariances.warmup_steps = 50
  config.invariances.part_metric_train = 0  # no part-metric read-out: quantify's measures cost
  config.invariances.part_metric_test = 0  # 0.1-0.4 s per image on 2 cores (factors are read out)

  # motion: the world's own part masks (quantify's segmenter learns them from these too);
  # the segmenter's would cost ~4 s per block of 32 sweeps on 2 cores (README, motion)
  config.motion.masks = "ground_truth"

  config.boundary.n_points = 2  # path measured at t = 0 and 1 and at both crossings
  config.boundary.batch_size = 56  # 112 searches -> 2 batches
  config.boundary.transfer_samples = 16  # new samples per pair for the transferred mean shift (56 pairs)

  # photos: 4 degraded renders of the world (JPEG + noise + 1 px shift) written into
  # WORKDIR/photos_in, inverted and explained (README "Real photographs")
  config.photos.images = "photos_in"
  config.photos.renders = 4
  config.photos.num_steps = 100
  config.photos.refine_steps = 2
  config.photos.batch_size = 4  # (padding rows cost as much as photos)
  config.photos.w_avg_samples = 500
  config.photos.lpips = "random"  # ImageNet VGG features say nothing about this world
  config.photos.lpips_weight = 0.0
  config.photos.max_steps = 500  # counterfactual search: 8 rows (4 from the inverted w,
  config.photos.check_every = 10  # 4 from the true w), image check every 10 steps
  config.photos.search_batch = 8
  return config
