"""A tiny random-weight Stable Diffusion pipeline, built offline for tests and CPU smoke runs.

Same classes and folder layout as a real SD 1.x checkpoint (unet, vae, text_encoder,
tokenizer, scheduler, model_index.json), so it goes through the real loading path;
only the sizes are small. The tokenizer is a byte-level BPE from a hand-written vocab:
the 256 byte-level characters, their `</w>` (end-of-word) forms, a few merges and the
two special tokens, so any lowercase prompt tokenises.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

# A few merges so the BPE merge path is exercised; everything else falls back to characters.
_MERGES = [("o", "f</w>"), ("p", "h"), ("ph", "o"), ("t", "o</w>"), ("pho", "to</w>"),
           ("a", "n"), ("t", "h"), ("th", "e</w>"), ("o", "g</w>"), ("d", "og</w>")]


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the 256 byte values."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges lines) of the tiny CLIP tokenizer."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = ["#version: 0.2"] + [f"{a} {b}" for a, b in _MERGES]
    return vocab, merges


def build_tiny_tokenizer():
    """A CLIPTokenizer (model_max_length 77) loaded from a vocab.json + merges.txt in a temp dir."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("\n".join(merges) + "\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def build_tiny_pipeline(path: str | Path | None = None, seed: int = 0):
    """Build a tiny random-weight StableDiffusionPipeline; save it to `path` if given.

    The VAE downsamples by 2 (two blocks): 32x32 images have 16x16 latents. Weights are
    drawn from `seed` (the global RNG is restored afterwards): same seed, same model.
    """
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        pipe = _build(tokenizer)
    if path is not None:
        pipe.save_pretrained(str(path))
    return pipe


def _build(tokenizer):
    """The five components at tiny sizes; unet sample_size 8 is only the default size hint."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32, cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32, sample_size=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
