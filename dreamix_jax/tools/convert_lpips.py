r"""Converts LPIPS PyTorch weights into one safetensors file, so metrics run without torch.

  python -m dreamix_jax.tools.convert_lpips --backbone=vgg16-397923af.pth \
      --heads=lpips/weights/v0.1/vgg.pth --out=lpips_vgg.safetensors

`--backbone` is torchvision's ImageNet `vgg16` or `alexnet` state dict (the net is told apart by
its first convolution), `--heads` lpips' v0.1 linear heads for the same net. The weights are
checked against the model before anything is written; load the result with
`dreamix_jax.metrics.lpips.LpipsModel.from_safetensors(out)`.
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from dreamix_jax.metrics import lpips

def define_flags():
  """Registers this tool's flags (only when it runs as a program, so importing it defines none)."""
  flags.DEFINE_string("backbone", None, "torchvision vgg16-*.pth or alexnet-*.pth.")
  flags.DEFINE_string("heads", None, "lpips weights/v0.1/{vgg,alex}.pth.")
  flags.DEFINE_string("out", None, "Output .safetensors path.")
  flags.mark_flags_as_required(["backbone", "heads", "out"])


def convert(backbone_path: str, heads_path: str, out_path: str) -> str:
  """Converts the two PyTorch files into `out_path`; returns the net ("vgg" or "alex")."""
  backbone = lpips.load_torch_state_dict(backbone_path)
  heads = lpips.load_torch_state_dict(heads_path)
  net = lpips.infer_net(backbone)
  lpips.save_converted(out_path, net, backbone, heads)
  return net


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  f = flags.FLAGS
  net = convert(f.backbone, f.heads, f.out)
  logging.info("Wrote LPIPS-%s weights to %s.", net, f.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
