"""Population analyses on top of the pipeline's outputs (pure numpy, no file I/O).

  rsa.py            semantic order: dissimilarity matrices, RSA with a permutation null,
                    linear CKA, nearest-neighbour class agreement
  superposition.py  concepts per unit, entropy of the |effect| profile, the
                    single-concept / superposed rule, the unit-to-concept table
  classwise.py      selectivity statistics per start-sample class
  motion.py         dense flow between consecutive images of a sweep (JAX, jitted) and each
                    part's affine motion: displacement, rotation, scale
"""
