"""The paper's setup: StyleGAN-XL ImageNet-256 + ResNet50, OLS link, the dog classes.

  python -m lis_jax.main --config=configs/linear.py --workdir=DIR
  python -m lis_jax.main --config=configs/linear.py --workdir=DIR --config.sweep.units=0,1,2

Needs converted checkpoints in DIR/checkpoints/ (the run stops at once, naming the
converter command, if they are missing):
  python -m converters.stylegan_xl --pkl imagenet256.pkl --out DIR/checkpoints/stylegan_xl_imagenet256
  python -m converters.torchvision --arch resnet50 --weights resnet50.pth --out DIR/checkpoints/resnet50
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stages = ("paired_data", "link", "sweep", "counterfactual")
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

  config.paired_data = ml_collections.ConfigDict()
  config.paired_data.n_per_class = 5000  # kept samples per class (the reference's N)
  config.paired_data.keep_only_correct = True  # keep only images classified as their class
  config.paired_data.store_all_ws = False  # also store all ws [num_ws, w_dim] (they are equal)
  config.paired_data.batch_size = 32  # images per jitted call (rounded up to the device count)
  config.paired_data.shard_size = 512  # tried latents per shard file (resume granularity)
  config.paired_data.max_tries_factor = 20.0  # give up on a class after this many x n tries

  config.link = ml_collections.ConfigDict()
  config.link.kind = "ols"  # ols | ridge | elasticnet | mlp
  config.link.alpha = 1.0  # ridge / elasticnet penalty (scikit-learn's meaning)
  config.link.l1_ratio = 0.5  # elasticnet L1 share
  config.link.float64 = False  # solve the linear fit in float64
  config.link.solver = "lstsq"  # ols: lstsq (SVD) | cholesky (normal equations + jitter)
  config.link.jitter = 1e-6  # cholesky diagonal, relative to the mean eigenvalue
  config.link.max_iter = 5000  # elasticnet FISTA iterations cap
  config.link.tol = 1e-7  # elasticnet relative coefficient change to stop at
  config.link.hidden = (1024,)  # mlp hidden widths
  config.link.epochs = 30  # mlp
  config.link.batch_size = 256  # mlp
  config.link.learning_rate = 1e-3  # mlp Adam
  config.link.holdout_fraction = 0.1  # held-out pairs for MSE / R^2
  config.link.cycle_samples = 256  # held-out samples for r -> w -> image -> r' (0: skip)

  config.sweep = ml_collections.ConfigDict()
  config.sweep.units = "all"  # 'all' or a list like '0,1,5:9'
  config.sweep.samples_per_class = 10  # start samples per class (first kept of each class)
  config.sweep.n_steps = 3  # values per unit
  config.sweep.range = "minmax"  # minmax: the unit's observed [min, max]; std: mean +- k std
  config.sweep.k_std = 2.0  # for range 'std'
  config.sweep.units_per_block = 4  # units per jitted block (U * S * T images)
  config.sweep.batch_size = 32  # images per synthesis call inside a block
  config.sweep.reclassify = True  # classify the generated images (r', logits)
  config.sweep.store_r_prime = False  # store the full r' [U, S, T, D] (large)
  config.sweep.store_logits = False  # store logits [U, S, T, C] (large)
  config.sweep.save_png = True  # PNG strips per (unit, sample)

  config.counterfactual = ml_collections.ConfigDict()
  config.counterfactual.pairs = "all"  # 'all' ordered pairs of config.classes, or '232>254,151>197'
  config.counterfactual.samples_per_pair = 4  # searches per (origin, target)
  config.counterfactual.mode = "reference"  # reference: loss on r; image: loss on the regenerated image
  config.counterfactual.lr = 0.5  # SGD learning rate
  config.counterfactual.max_steps = 2000  # give up after this many steps
  config.counterfactual.check_every = 1  # image-domain stopping check every k steps (1: reference)
  config.counterfactual.w_origin = 0.6  # weight of +logit_origin in the loss
  config.counterfactual.w_cos = 10.0  # weight of -cos(link(r), link(r - s))
  config.counterfactual.batch_size = 64  # searches per jitted while_loop
  config.counterfactual.compact_rows = 0  # when <= this many searches still run, check only those (0: off; on CPU try batch_size / 4)
  config.counterfactual.top_units = 10  # units with the largest |shift| to record
  config.counterfactual.save_png = True  # before | after PNG per search

  # Stage 'quantify' (add it to config.stages once the labelled masks exist).
  config.quantify = ml_collections.ConfigDict()
  config.quantify.labels = "seg_labels/dogs"  # in the workdir: w/*.npy, labels/*.npy, part_names.json
  config.quantify.n_labelled = 20  # labelled images the segmentation head trains on
  config.quantify.n_heldout = 0  # ground-truth worlds only; a label dir holds out what is left
  config.quantify.resolution = 128  # images and masks are segmented and measured at 128 px
  config.quantify.layers = "every_other"  # the reference: every other synthesis layer
  config.quantify.head = "S"  # the reference's FewShotCNN size
  config.quantify.epochs = 100  # reference training: Adam, one image per step
  config.quantify.train_batch = 1
  config.quantify.lr = 1e-3
  config.quantify.weight_decay = 1e-3
  config.quantify.lr_step_epochs = 50  # lr x lr_gamma every 50 epochs (torch StepLR)
  config.quantify.lr_gamma = 0.1
  config.quantify.samples_per_unit = 10  # start samples measured per unit
  config.quantify.null_draws = 2  # random directions per (unit, start sample)
  config.quantify.max_components = 3  # ellipses per part (largest connected components)
  config.quantify.batch_size = 32  # images per segment-and-measure call
  config.quantify.n_boot = 1000  # bootstrap resamples of the start samples
  config.quantify.level = 0.95  # interval coverage
  config.quantify.alpha = 0.05  # null p-value threshold for 'selective'
  config.quantify.top_k = 10  # units listed per (part, metric) concept
  config.quantify.cards = 8  # unit cards in the report
  return config
