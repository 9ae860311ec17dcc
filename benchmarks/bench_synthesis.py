"""Speed of jitted StyleGAN-XL synthesis in lis_jax (random weights), images/s.

Builds a randomly initialised generator from a preset of
`lis_jax.generators.stylegan_xl.PRESETS` ('tiny', 'mid': 16 -> 32 -> 64 px, ~15M
parameters, 22 ws; 'full': the ImageNet-256 architecture, 32 ws), jits
`G.synthesis(ws)` with the generator as an argument (params traced, not baked in),
and prints the compile time, the best and the median images/s over the timed
iterations, and the process's peak memory. With --dtype bfloat16 it also prints the
bfloat16 images' error against float32 images of the same weights and ws.

Usage (issue 3, item 5; compare with benchmarks/reference_torch_synthesis.py):
  python benchmarks/bench_synthesis.py --arch mid --batch 8 --dtype float32
  python benchmarks/bench_synthesis.py --arch full --batch 4 --iters 1
  python benchmarks/bench_synthesis.py --arch mid --batch 8 --dtype bfloat16

On a CPU machine XLA uses every core it sees; pin it (e.g. `taskset -c 0,1`) to compare
with the reference run at 2 threads on a bigger machine.
"""
import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lis_jax.generators import stylegan_xl

PSI = 0.7  # truncation used by the pipeline (DESIGN.md); ws come from the mapping


def _synthesize(G, ws):
  return G.synthesis(ws)  # [N, H, W, 3]


def _time(synth, G, ws, warmup: int, iters: int):
  """(seconds of the first call incl. compile, wall and CPU seconds per timed call,
  last output)."""
  start = time.perf_counter()
  img = synth(G, ws).block_until_ready()
  first = time.perf_counter() - start
  for _ in range(warmup):
    img = synth(G, ws).block_until_ready()
  seconds, cpu_seconds = [], []
  for _ in range(iters):
    start, cpu_start = time.perf_counter(), time.process_time()
    img = synth(G, ws).block_until_ready()
    seconds.append(time.perf_counter() - start)
    cpu_seconds.append(time.process_time() - cpu_start)
  return first, seconds, cpu_seconds, img


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", choices=sorted(stylegan_xl.PRESETS), default="mid")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="synthesis compute dtype (outputs stay float32)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls after compiling")
  parser.add_argument("--iters", type=int, default=3, help="timed calls")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  key_weights, key_z, key_c = jax.random.split(jax.random.PRNGKey(args.seed), 3)
  G = stylegan_xl.random_generator(args.arch, key_weights)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(G.variables["params"]))
  z = jax.random.normal(key_z, (args.batch, G.z_dim))  # [N, z_dim]
  classes = jax.random.randint(key_c, (args.batch,), 0, G.c_dim)  # [N]
  ws = jax.jit(lambda G, z, c: G.mapping(z, c, psi=PSI))(G, z, classes)  # [N, num_ws, w_dim]
  print(f"arch={args.arch} resolution={G.resolution} num_ws={G.num_ws} "
        f"params={num_params / 1e6:.2f}M batch={args.batch} dtype={args.dtype} "
        f"devices={jax.devices()} jax={jax.__version__}", flush=True)

  synth = jax.jit(_synthesize)
  G_run = G.astype(args.dtype)
  first, seconds, cpu_seconds, img = _time(synth, G_run, ws, args.warmup, args.iters)
  assert img.shape == (args.batch, G.resolution, G.resolution, 3), img.shape
  rates = [args.batch / s for s in seconds]
  for i, (s, c) in enumerate(zip(seconds, cpu_seconds)):
    print(f"  iter {i}: {s:.3f} s (cpu {c:.3f} s), {args.batch / s:.3f} images/s")
  print(f"compile + first call: {first:.1f} s")
  if rates:
    print(f"lis_jax synthesis ({args.dtype}): best {max(rates):.3f} images/s, "
          f"median {statistics.median(rates):.3f} images/s over {len(rates)} timed iterations")
    # Less sensitive to other processes on a shared machine than wall-clock time.
    print(f"images per CPU-second: median {statistics.median(args.batch / c for c in cpu_seconds):.3f}")

  if args.dtype != "float32":
    reference = np.asarray(synth(G, ws))  # float32 images, same weights and ws
    diff = np.abs(np.asarray(img, np.float32) - reference)
    scale = max(1.0, float(np.abs(reference).max()))
    print(f"{args.dtype} vs float32 images: max |diff| {diff.max():.4g} "
          f"({diff.max() / scale:.3g} of max(1, max |float32|)), mean |diff| {diff.mean():.4g}")
  # ru_maxrss is in KiB on Linux.
  print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
  main()
