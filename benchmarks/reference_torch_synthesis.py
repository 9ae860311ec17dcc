"""Speed baseline: images/s of the reference PyTorch StyleGAN-XL `G.synthesis` on CPU.

Builds a StyleGAN-XL generator with random weights from a checkout of
autonomousvision/stylegan-xl (given by --ref_dir; nothing of it is part of this
project), exactly as the trainer grows it: a `Generator` stem at 16 px, then stacked
`SuperresGenerator` stages that each double the resolution. Runs float32 on the CPU,
where the reference ops (bias_act, upfirdn2d, filtered_lrelu) take their pure-PyTorch
fallback paths (no CUDA plugins are built). Prints the best and the median images/s
of `G.synthesis(ws)` over the timed iterations.

Usage (the numbers quoted in issue 3, item 5):
  mkdir -p /tmp/sgxl_ref && git --git-dir=/path/to/stylegan-xl/.git archive HEAD \
      torch_utils training dnnlib legacy.py | tar -x -C /tmp/sgxl_ref
  python benchmarks/reference_torch_synthesis.py --ref_dir /tmp/sgxl_ref --arch mid \
      --batch 8 --threads 2

Two file reads of the reference are replaced in memory (no files are patched): the
mapping network's class embedding, which it unpickles from
`in_embeddings/tf_efficientnet_lite0.pkl` (a dill pickle), becomes a random
`torch.nn.Embedding(1000, 320)` (the shape of that file; the mapping is not timed), and
the previous stage's pickle that `SuperresGenerator` loads from `path_stem` becomes the
generator built one step before.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
import types

import torch

# name -> (channel_base, channel_max, stem layers, head layers per stage, stages).
# Resolution is 16 * 2**stages; num_ws = stem + 2 + stages * (head - num_critical(2) - 1
# + ...) as the reference computes it (mid: 22 ws, full: 32 ws).
ARCHS = {
    # 16 -> 32 -> 64, ~15M parameters, 22 ws: the benchmark architecture of issue 3.
    "mid": dict(channel_base=16384, channel_max=256, stem_layers=10, head_layers=7, stages=2),
    # The released ImageNet-256 generator: 16 -> ... -> 256, 32 ws.
    "full": dict(channel_base=65536, channel_max=1024, stem_layers=10, head_layers=7, stages=4),
    # A small one for checking that the script runs.
    "tiny": dict(channel_base=1024, channel_max=48, stem_layers=6, head_layers=5, stages=1),
}
Z_DIM = 64  # StyleGAN-XL's train.py
EMBED_DIM = 320  # tf_efficientnet_lite0 class embeddings (FIXTURES.md: 1000 x 320)
W_DIM = 512
C_DIM = 1000
STEM_RESOLUTION = 16


def build_generator(ref_dir: str, arch: str):
  """The reference generator for `arch` with its random initial weights (eval mode)."""
  cfg = ARCHS[arch]
  ref_dir = os.path.abspath(ref_dir)
  sys.path.insert(0, ref_dir)
  from training import networks_stylegan3_resetting as net  # pylint: disable=import-outside-toplevel

  # MappingNetwork: `with open(embed_path, 'rb') as f: pickle.Unpickler(f).load()['embed']`.
  net.open = lambda *args, **kwargs: contextlib.nullcontext(None)
  net.pickle = types.SimpleNamespace(Unpickler=lambda f: types.SimpleNamespace(
      load=lambda: {"embed": torch.nn.Embedding(C_DIM, EMBED_DIM)}))

  with contextlib.redirect_stdout(sys.stderr):  # the reference prints while building
    G = net.Generator(z_dim=Z_DIM, c_dim=C_DIM, w_dim=W_DIM, img_resolution=STEM_RESOLUTION,
                      img_channels=3, mapping_kwargs=dict(num_layers=2, rand_embedding=True),
                      channel_base=cfg["channel_base"], channel_max=cfg["channel_max"],
                      num_layers=cfg["stem_layers"], conv_kernel=3, use_radial_filters=False)
    for stage in range(cfg["stages"]):
      previous = G
      # SuperresGenerator loads its stem from `path_stem`; hand it the one just built.
      net.dnnlib.util.open_url = lambda path, *a, **k: contextlib.nullcontext(path)
      net.legacy.load_network_pkl = lambda f, *a, _prev=previous, **k: {"G_ema": _prev}
      G = net.SuperresGenerator(img_resolution=STEM_RESOLUTION * 2 ** (stage + 1),
                                path_stem=f"<stage {stage} in memory>",
                                head_layers=cfg["head_layers"], up_factor=2)
  return G.eval().requires_grad_(False)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ref_dir", required=True, help="checkout of autonomousvision/stylegan-xl")
  parser.add_argument("--arch", choices=sorted(ARCHS), default="mid")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  parser.add_argument("--warmup", type=int, default=1, help="untimed iterations")
  parser.add_argument("--iters", type=int, default=3, help="timed iterations")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if not os.path.isfile(os.path.join(args.ref_dir, "training", "networks_stylegan3_resetting.py")):
    print(f"error: {args.ref_dir} is not a stylegan-xl checkout "
          f"(no training/networks_stylegan3_resetting.py)", file=sys.stderr)
    sys.exit(1)

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  G = build_generator(args.ref_dir, args.arch)
  synthesis = G.synthesis
  num_params = sum(p.numel() for p in G.parameters())
  synthesis_params = sum(p.numel() for p in synthesis.parameters())
  ws = torch.randn([args.batch, synthesis.num_ws, W_DIM])  # [N, num_ws, w_dim]
  print(f"arch={args.arch} resolution={G.img_resolution} num_ws={synthesis.num_ws} "
        f"params={num_params / 1e6:.2f}M (synthesis {synthesis_params / 1e6:.2f}M) "
        f"batch={args.batch} threads={torch.get_num_threads()} torch={torch.__version__}")

  rates, cpu_rates = [], []
  with torch.no_grad():
    for i in range(args.warmup + args.iters):
      start, cpu_start = time.perf_counter(), time.process_time()
      img = synthesis(ws, force_fp32=True)  # [N, 3, H, W]
      seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
      if i >= args.warmup:
        rates.append(args.batch / seconds)
        cpu_rates.append(args.batch / cpu_seconds)
      print(f"  iter {i}{' (warm-up)' if i < args.warmup else ''}: {seconds:.2f} s "
            f"(cpu {cpu_seconds:.2f} s), {args.batch / seconds:.3f} images/s", flush=True)
  assert img.shape == (args.batch, 3, G.img_resolution, G.img_resolution), img.shape
  print(f"reference torch synthesis: best {max(rates):.3f} images/s, "
        f"median {statistics.median(rates):.3f} images/s over {len(rates)} timed iterations")
  # Less sensitive to other processes on a shared machine than wall-clock time.
  print(f"images per CPU-second: median {statistics.median(cpu_rates):.3f}")


if __name__ == "__main__":
  main()
