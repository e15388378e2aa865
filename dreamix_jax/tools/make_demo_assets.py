"""Renders the demo inputs shipped in `assets/` from the moving-shapes world (deterministic).

  python -m dreamix_jax.tools.make_demo_assets --out=assets

- `shapes_clip.mp4`: the default input of `configs/edit.py`, "a red circle moving right on a black
  background", 32 frames of 48×80 at 6 fps (the demo cascade's top stage).
- `shapes_frame.png`: its first frame, the default input of `configs/image2video.py`.
- `shapes_subject/`: four images of one subject (a green triangle) on different backgrounds and at
  different sizes, the default input of `configs/subject.py`.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from dreamix_jax.data import outputs
from dreamix_jax.shapes import world as shapes

CLIP = shapes.ClipAttributes(shape="circle", color="red", background="black", motion="right",
                             x=18.0, y=24.0, size=14.0, speed=1.2, texture_seed=7)
CLIP_CAPTION = shapes.caption(CLIP)
FPS = 6.0
SUBJECT = [
    shapes.ClipAttributes(shape="triangle", color="green", background=bg, motion="still",
                          x=x, y=y, size=size, speed=0.0, texture_seed=seed)
    for bg, x, y, size, seed in (("black", 30.0, 22.0, 16.0, 11), ("gray", 50.0, 26.0, 14.0, 12),
                                 ("purple", 40.0, 20.0, 17.0, 13), ("black", 24.0, 30.0, 12.0, 14))
]
SUBJECT_SIZES = ((48, 80), (96, 160), (60, 100), (48, 80))  # different sizes on purpose


def make_demo_assets(out_dir: str) -> dict[str, str]:
  """Writes the three assets into `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  video = shapes.render(CLIP)
  clip = os.path.join(out_dir, "shapes_clip.mp4")
  outputs.write_mp4(clip, video, FPS)
  frame = os.path.join(out_dir, "shapes_frame.png")
  outputs.write_png(frame, video[0])
  subject = os.path.join(out_dir, "shapes_subject")
  os.makedirs(subject, exist_ok=True)
  for i, (attrs, (h, w)) in enumerate(zip(SUBJECT, SUBJECT_SIZES)):
    outputs.write_png(os.path.join(subject, f"{i}.png"), shapes.render_image(attrs, h, w))
  return {"clip": clip, "frame": frame, "subject": subject}


def main(argv):
  del argv
  for name, path in make_demo_assets(flags.FLAGS.out).items():
    print(f"{name}: {path}")


if __name__ == "__main__":
  flags.DEFINE_string("out", "assets", "Output directory.")
  app.run(main)
