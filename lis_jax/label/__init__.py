"""Labelling part masks for the quantify stage: `python -m lis_jax.label export | import | suggest`.

  export   generate seeded images per class with the configured generator, write them
           (full size and at quantify.resolution), their ws, a part_names.json to edit
           and label.html, a self-contained labeller page (lis_jax/assets/labeller.html)
  import   read masks (the labeller's indexed PNGs, RGB PNGs with a colour per part,
           LabelMe JSON, a CVAT "Segmentation mask" export), resample them with nearest
           neighbour to quantify.resolution, write labels/<name>.npy
  suggest  train the quantify stage's part segmenter on the labels so far, print its
           leave-some-out held-out IoU, write predictions for the unlabelled images as
           starting masks and rewrite label.html with them

The directory layout is in `layout`; mask readers in `masks`.
"""
