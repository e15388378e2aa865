"""Evaluation: score a folder of results, or run the moving-shapes ablation benchmark.

  python -m dreamix_jax.main --config=configs/eval.py:outputs=/tmp/dreamix/sweep --workdir=/tmp/eval
  python -m dreamix_jax.main --config=configs/eval.py:outputs=<dir>,clip_dir=<hf clip>,lpips_weights=<file>
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=shapes --workdir=/tmp/ablation
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=shapes,runlocal --workdir=/tmp/abl
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=shapes,upto=ssr --workdir=/tmp/abl_ssr
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=text2video --workdir=/tmp/t2v_eval
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=text2video,upto=base --workdir=/tmp/t2v
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=classifier --workdir=/tmp/clf
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=drift --workdir=/tmp/drift
  python -m dreamix_jax.main --config=configs/eval.py:benchmark=caption_fit --workdir=/tmp/fit

`outputs`: scores every result folder under it into `<workdir>/scores.csv` and `scores.md` (temporal
distance always; CLIP score with `clip_dir`, a local Hugging Face CLIP; temporal LPIPS with
`lpips_weights`, a file from tools/convert_lpips; the moving-shapes probe for shapes prompts).
`benchmark=shapes`: edits `ablation.num_clips` test-split clips × 4 edit categories (`:world=motion`:
the motion-only world's clips, motion edits only) with 4 methods
(no finetuning at s = `ablation.s_none`; video (α = 1) and mixed (α = 0.35) finetuning for
`ablation.steps.video` and `ablation.steps.mixed` steps at s = `ablation.s_finetuned`;
text-to-video) on the demo cascade, scores the outputs of stage `upto` (default: base, the stage
the methods finetune; `upto=ssr` scores the cascade's final videos) and writes
ablation.csv/.md, ablation_edits.csv and ablation_success[_kept].png; each finished clip is kept in
`ablation_clips/`, so a stopped run resumes where it was when started again in the same workdir.
`runlocal`: tiny random cascade, one clip, a few steps.
`benchmark=text2video`: samples the captions of the first `text2video.num_captions` test-split clips
through the cascade up to stage `upto` (default: the last) and reports, per caption attribute, the
share of samples in which the probe finds it (text2video.csv/.md, text2video_samples.csv,
text2video_confusion_<attribute>.csv/.md: captioned × read values, text2video_grid.png). With
`upto=base` and `--config.text2video.trace=True` the probe also reads the x̂0 of every sampler step
(text2video_decision.csv/.md: at which log-SNR each attribute is decided; same samples).
`benchmark=classifier`: for the first `classifier.num_clips` test clips, which caption the base
stage's denoising error prefers among those changing one attribute (classifier.csv/.md,
classifier_clips.csv): whether the model uses each caption word at all, from forward passes only.
`benchmark=drift`: for each motion word, how far the base stage's prediction from pure noise (the
caption's mean video) moves from the first to the last quarter of the clip, against the world's
own mean video (drift.csv/.md; seconds). With `drift.num_samples` > 0 (minutes on a CPU), also
whether that drift would set the samples' motion: the guided sampler started where its first step
would land if the base predicted each caption's mean, against samples from pure noise.
`benchmark=caption_fit`: for each of `caption_fit.attributes`, a copy of the base stage trained on
four clips that differ only in that attribute, from pure noise (`caption_fit.steps` Adam steps):
every `report_every` steps, how many of the four captions' predictions are nearest their own clip
(caption_fit.csv/.md): can the weights tie the words to the video, and how fast.
"""

from configs import common
from dreamix_jax import config_utils as cu
from dreamix_jax.dreamix import finetune
from dreamix_jax.dreamix import sweep


def get_config(arg=None):
  arg = cu.parse_arg(arg, runlocal=False, cascade="", outputs="", benchmark="", clip_dir="",
                     lpips_weights="", upto="", world="")
  config = common.base_config("eval", arg.runlocal, arg.cascade)
  config.outputs = arg.outputs
  config.clip_dir = arg.clip_dir
  config.lpips_weights = arg.lpips_weights
  config.benchmark = arg.benchmark
  # The world the ablation, text2video and classifier benchmarks draw test clips from:
  # `:world=motion` is the motion-only world of the direction-of-motion A/B (configs/pretrain.py;
  # the ablation then edits the motion alone); empty: all values.
  config.vocabulary = dict(color=("white",), shape=("square",), background=("black",),
                           motion=()) if arg.world == "motion" else dict(
                               color=(), shape=(), motion=(), background=())
  # The ablation scores the base stage's output unless `upto` names a later stage: the methods differ
  # only in the base stage (the one they finetune), and the demo cascade's SR stages do not keep
  # the world's fine texture even from a perfect input (see docs/ablation.md).
  finetune_steps = 2 if arg.runlocal else 150
  config.ablation = dict(num_clips=1 if arg.runlocal else 12, data_seed=0,
                         steps=dict(video=finetune_steps, mixed=finetune_steps),
                         s_none=0.8, s_finetuned=0.9, upto=arg.upto or "base")
  # trace=True (with upto=base): also probe the x̂0 of every sampler step (text2video_decision.md).
  config.text2video = dict(num_captions=2 if arg.runlocal else 100, data_seed=0, upto=arg.upto,
                           batch_size=1 if arg.runlocal else 25, trace=False)
  # Log-SNRs from where the object is barely visible (−6) to lightly noised (2); the same noise is
  # shared by every candidate caption of a clip.
  config.classifier = dict(num_clips=2 if arg.runlocal else 32, data_seed=0,
                           logsnrs=(-6.0, -4.0, -2.0, 0.0, 2.0))
  # Log-SNRs where the input is (nearly) pure noise; 16 draws per caption; 200 rendered clips per
  # motion for the world's mean; num_samples per motion sampled from the mean start (0: none). The
  # object is the motion-only world's own with `:world=motion`.
  still = "a {} standing still on a black background".format(
      "white square" if arg.world == "motion" else "red circle")
  config.drift = dict(object=still,
                      logsnrs=(-10.0, -6.0), num_noise=2 if arg.runlocal else 16,
                      num_clips=8 if arg.runlocal else 200, num_samples=0)
  # Four clips differing in one attribute, memorised from pure noise by a copy of the base stage.
  config.caption_fit = dict(attributes=("color", "motion"), steps=2 if arg.runlocal else 150,
                            learning_rate=1e-3, report_every=1 if arg.runlocal else 25)
  config.alphas = dict(sweep.PAPER_ALPHAS)
  # As configs/edit.py: the finetuned methods tune the base stage alone, batch 1 (tuning tsr and ssr
  # too would multiply the cost of every clip and method on a CPU).
  config.finetune = finetune.finetune_config(
      batch_size=1, log_every=1 if arg.runlocal else 10, stages=("base",))
  config.finetune.optimizer.lr = 1e-4  # as configs/edit.py: the toy cascade takes a larger step
  for unused in ("alpha", "steps", "checkpoint_every"):  # set per method by config.ablation
    del config.finetune[unused]
  return config
