"""CLIP text tower parity with transformers' PyTorch CLIPTextModel (last hidden state), and the
diffusers prompt conventions of `ClipTextEmbedder` (77 tokens, all attended, null = "")."""

import numpy as np
import pytest
import torch

from dreamix_jax.backbones import diffusers_import
from diffusers_tiny import max_rel_error, tiny_text_encoder, write_pipeline

TOL = 1e-4
PROMPTS = ["a bear dancing", "A dog runs on the beach, at sunset!"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  model = tiny_text_encoder()
  root = write_pipeline(tmp_path_factory.mktemp("pipe"), text_encoder=model, tokenizer=True)
  return dict(model=model, embedder=diffusers_import.clip_text_embedder(root, max_batch=4))


def _torch(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).last_hidden_state.numpy()


def test_last_hidden_state_matches_pytorch(setup):
  embedder = setup["embedder"]
  ids = embedder.tokenize(PROMPTS)
  assert ids.shape == (2, 77)
  assert ids[0, 0] == 0 and 1 in ids[0]  # start token, end/pad token
  embeddings, mask = embedder(PROMPTS)
  ref = _torch(setup["model"], ids)
  err = max_rel_error(embeddings, ref)
  print(f"CLIP text last hidden state: max|ref| {np.abs(ref).max():.3f}, relative max error "
        f"{err:.2e}")
  assert embeddings.shape == (2, 77, 32) and embeddings.dtype == np.float32
  assert err <= TOL
  assert mask.shape == (2, 77) and mask.all()  # the UNet3D attends to every position


def test_null_is_the_empty_prompt_and_batches_are_consistent(setup):
  embedder = setup["embedder"]
  null, mask = embedder.null(3)
  np.testing.assert_allclose(null, np.repeat(embedder([""])[0], 3, axis=0), atol=1e-6)
  assert null.shape == (3, 77, 32) and mask.all()
  # More prompts than max_batch (4): chunked, padded batches give the same rows.
  many, _ = embedder(PROMPTS * 3)
  np.testing.assert_allclose(many[:2], embedder(PROMPTS)[0], atol=1e-5)
  np.testing.assert_allclose(many[4:6], many[:2], atol=1e-5)


def test_long_prompts_are_truncated_to_77_tokens(setup):
  embedder = setup["embedder"]
  ids = embedder.tokenize(["word " * 100])
  assert ids.shape == (1, 77) and ids[0, -1] == 1  # ends with the end-of-text token
  with pytest.raises(ValueError, match="sequence of prompts"):
    embedder("one string")
