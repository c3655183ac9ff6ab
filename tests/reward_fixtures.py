"""Tiny random-weight checkpoints in the on-disk formats and file names of the real reward releases.

Nothing here downloads anything: every checkpoint is built from a seeded generator, written where the test
asks, and then loaded through the same code path users use with the real weights.

* ``make_clip_folder``: a transformers CLIP folder (``config.json``, ``model.safetensors``, ``vocab.json``,
  ``merges.txt``, ``preprocessor_config.json``): PickScore_v1 / openai CLIP layout.
* ``make_openclip_state`` / ``write_hps``: an open_clip CLIP state dict under ``"state_dict"`` in
  ``HPS_v2_compressed.pt`` (HPSv2 layout), plus ``openclip_reference`` (an independent forward pass).
* ``write_imagereward``: ``ImageReward.pt`` (``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``)
  + ``med_config.json``, plus a BERT ``vocab.txt`` tokenizer folder.
* ``write_aesthetic_head``: ``sac+logos+ava1-l14-linearMSE.pth`` (``layers.{0,2,4,6,7}``).
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import torch
import torch.nn.functional as F

CHARS = list(string.ascii_lowercase + string.digits + ".,!?'\"-")


def write_clip_tokenizer(folder: Path) -> int:
    """A character-level CLIP BPE vocabulary (plus two merges); returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for c in CHARS:
        vocab[c] = len(vocab)
    for c in CHARS:
        vocab[c + "</w>"] = len(vocab)
    merges = [("c", "a"), ("ca", "t</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)  # the highest id, as in OpenAI's vocabulary (open_clip pools at argmax)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return len(vocab)


def clip_vocab_size() -> int:
    return 2 * len(CHARS) + 4


def make_clip_folder(
    folder: Path,
    seed: int = 0,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    width: int = 32,
    projection_dim: int = 16,
    tokenizer: bool = True,
    processor: bool = True,
    logit_scale: float = math.log(100.0),
) -> Path:
    """Save a tiny ``CLIPModel`` (random weights from ``seed``) as a transformers folder."""
    from transformers import CLIPConfig, CLIPModel

    vocab = clip_vocab_size()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, eos_token_id=vocab - 1,
                         bos_token_id=vocab - 2, pad_token_id=vocab - 1),
        vision_config=dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=4, image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim,
        logit_scale_init_value=logit_scale,
    )  # fmt: skip
    model = CLIPModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    if tokenizer:
        write_clip_tokenizer(folder)
    if processor:  # CLIPImageProcessor's preprocessor_config.json fields
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "do_convert_rgb": True,
        }, indent=2))  # fmt: skip
    return folder


# ---------------------------------------------------------------- open_clip (HPSv2)


def make_openclip_state(
    seed: int = 0, *, v_width: int = 32, t_width: int = 32, layers: int = 2, embed: int = 16, patch: int = 8,
    image: int = 32, ctx: int = 77,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """An open_clip ``CLIP`` state dict with the key names and layouts of ``open_clip/model.py``."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, std: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    vocab = clip_vocab_size()
    sd: dict[str, torch.Tensor] = {
        "visual.conv1.weight": r(v_width, 3, patch, patch),
        "visual.class_embedding": r(v_width),
        "visual.positional_embedding": r((image // patch) ** 2 + 1, v_width),
        "visual.ln_pre.weight": 1 + r(v_width), "visual.ln_pre.bias": r(v_width),
        "visual.ln_post.weight": 1 + r(v_width), "visual.ln_post.bias": r(v_width),
        "visual.proj": r(v_width, embed),
        "token_embedding.weight": r(vocab, t_width),
        "positional_embedding": r(ctx, t_width),
        "ln_final.weight": 1 + r(t_width), "ln_final.bias": r(t_width),
        "text_projection": r(t_width, embed),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
        "attn_mask": torch.full((ctx, ctx), float("-inf")).triu(1),
    }  # fmt: skip
    for prefix, w in (("visual.transformer", v_width), ("transformer", t_width)):
        for i in range(layers):
            b = f"{prefix}.resblocks.{i}."
            sd.update({
                b + "ln_1.weight": 1 + r(w), b + "ln_1.bias": r(w),
                b + "attn.in_proj_weight": r(3 * w, w), b + "attn.in_proj_bias": r(3 * w),
                b + "attn.out_proj.weight": r(w, w), b + "attn.out_proj.bias": r(w),
                b + "ln_2.weight": 1 + r(w), b + "ln_2.bias": r(w),
                b + "mlp.c_fc.weight": r(4 * w, w), b + "mlp.c_fc.bias": r(4 * w),
                b + "mlp.c_proj.weight": r(w, 4 * w), b + "mlp.c_proj.bias": r(w),
            })  # fmt: skip
    return sd


def write_hps(folder: Path, state: dict[str, torch.Tensor], filename: str = "HPS_v2_compressed.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, folder / filename)
    return folder / filename


def _ref_block(x: torch.Tensor, sd: dict[str, torch.Tensor], b: str, heads: int, causal: bool) -> torch.Tensor:
    """open_clip ResidualAttentionBlock written out: x + attn(ln_1(x)); x + mlp(ln_2(x)), GELU, [B, L, W]."""
    w = x.shape[-1]
    h = F.layer_norm(x, (w,), sd[b + "ln_1.weight"], sd[b + "ln_1.bias"])
    qkv = h @ sd[b + "attn.in_proj_weight"].t() + sd[b + "attn.in_proj_bias"]
    q, k, v = (t.reshape(x.shape[0], x.shape[1], heads, w // heads).transpose(1, 2) for t in qkv.split(w, -1))
    att = (q @ k.transpose(-1, -2)) / math.sqrt(w // heads)
    if causal:
        att = att + torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)
    o = (att.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
    x = x + o @ sd[b + "attn.out_proj.weight"].t() + sd[b + "attn.out_proj.bias"]
    h = F.layer_norm(x, (w,), sd[b + "ln_2.weight"], sd[b + "ln_2.bias"])
    h = F.gelu(h @ sd[b + "mlp.c_fc.weight"].t() + sd[b + "mlp.c_fc.bias"])
    return x + h @ sd[b + "mlp.c_proj.weight"].t() + sd[b + "mlp.c_proj.bias"]


def openclip_reference(
    sd: dict[str, torch.Tensor], pixels: torch.Tensor, ids: torch.Tensor, heads: int, layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised (image, text) features of open_clip's forward, computed directly from the state dict."""
    conv = sd["visual.conv1.weight"]
    x = F.conv2d(pixels, conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
    w = x.shape[-1]
    x = F.layer_norm(x, (w,), sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in range(layers):
        x = _ref_block(x, sd, f"visual.transformer.resblocks.{i}.", heads, causal=False)
    pooled = F.layer_norm(x[:, 0], (w,), sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    image = F.normalize(pooled @ sd["visual.proj"], dim=-1)
    t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    for i in range(layers):
        t = _ref_block(t, sd, f"transformer.resblocks.{i}.", heads, causal=True)
    tw = t.shape[-1]
    t = F.layer_norm(t, (tw,), sd["ln_final.weight"], sd["ln_final.bias"])
    text = F.normalize(t[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"], dim=-1)
    return image, text


def openclip_tokenize(prompts: list[str], vocab_json: Path, ctx: int = 77) -> torch.Tensor:
    """open_clip's SimpleTokenizer contract for the char-level vocabulary: sot, tokens, eot, zero padding."""
    vocab = json.loads(vocab_json.read_text())
    rows = []
    for p in prompts:
        ids = [vocab["<|startoftext|>"]]
        for word in p.lower().split():
            word = word.strip()
            if word == "cat":
                ids.append(vocab["cat</w>"])
                continue
            ids += [vocab[c] for c in word[:-1]] + [vocab[word[-1] + "</w>"]]
        ids.append(vocab["<|endoftext|>"])
        rows.append(ids[:ctx] + [0] * (ctx - len(ids)))
    return torch.tensor(rows)


# ---------------------------------------------------------------- aesthetic head


def aesthetic_state(in_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dims = [(in_dim, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    sd = {}
    for idx, (i, o) in zip((0, 2, 4, 6, 7), dims, strict=True):
        sd[f"layers.{idx}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        sd[f"layers.{idx}.bias"] = torch.randn(o, generator=g) * 0.1
    return sd


def write_aesthetic_head(folder: Path, in_dim: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(aesthetic_state(in_dim, seed), path)
    return path


# ---------------------------------------------------------------- ImageReward (BLIP + MLP)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_bert_vocab(folder: Path) -> int:
    """A tiny BERT WordPiece vocabulary (specials, a few words, every character and ``##`` character)."""
    folder.mkdir(parents=True, exist_ok=True)
    words = ["a", "photo", "of", "cat", "red", "blue", "circle", "square"]
    tokens = BERT_SPECIALS + words + [c for c in CHARS if c not in words] + [f"##{c}" for c in CHARS]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return len(tokens)


def write_imagereward(
    folder: Path, tokenizer_folder: Path, seed: int = 0, *, v_width: int = 32, t_width: int = 32, layers: int = 2,
    patch: int = 8, image: int = 32, drop: tuple[str, ...] = (),
) -> Path:  # fmt: skip
    """``ImageReward.pt`` + ``med_config.json`` with the release's key names; ``drop``: keys to leave out."""
    vocab = write_bert_vocab(tokenizer_folder) + 2  # BLIP adds [DEC] and [ENC]
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, std: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    v, t = "blip.visual_encoder.", "blip.text_encoder."
    sd: dict[str, torch.Tensor] = {
        v + "cls_token": r(1, 1, v_width), v + "pos_embed": r(1, (image // patch) ** 2 + 1, v_width),
        v + "patch_embed.proj.weight": r(v_width, 3, patch, patch), v + "patch_embed.proj.bias": r(v_width),
        v + "norm.weight": 1 + r(v_width), v + "norm.bias": r(v_width),
        t + "embeddings.word_embeddings.weight": r(vocab, t_width),
        t + "embeddings.position_embeddings.weight": r(40, t_width),
        t + "embeddings.LayerNorm.weight": 1 + r(t_width), t + "embeddings.LayerNorm.bias": r(t_width),
        t + "embeddings.position_ids": torch.arange(40).unsqueeze(0),
        "blip.vision_proj.weight": r(8, v_width), "blip.vision_proj.bias": r(8),
        "blip.text_proj.weight": r(8, t_width), "blip.text_proj.bias": r(8),
    }  # fmt: skip
    for i in range(layers):
        b = f"{v}blocks.{i}."
        sd.update({
            b + "norm1.weight": 1 + r(v_width), b + "norm1.bias": r(v_width),
            b + "attn.qkv.weight": r(3 * v_width, v_width), b + "attn.qkv.bias": r(3 * v_width),
            b + "attn.proj.weight": r(v_width, v_width), b + "attn.proj.bias": r(v_width),
            b + "norm2.weight": 1 + r(v_width), b + "norm2.bias": r(v_width),
            b + "mlp.fc1.weight": r(4 * v_width, v_width), b + "mlp.fc1.bias": r(4 * v_width),
            b + "mlp.fc2.weight": r(v_width, 4 * v_width), b + "mlp.fc2.bias": r(v_width),
        })  # fmt: skip
        b = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", t_width), ("crossattention", v_width)):
            sd.update({
                f"{b}{att}.self.query.weight": r(t_width, t_width), f"{b}{att}.self.query.bias": r(t_width),
                f"{b}{att}.self.key.weight": r(t_width, kv), f"{b}{att}.self.key.bias": r(t_width),
                f"{b}{att}.self.value.weight": r(t_width, kv), f"{b}{att}.self.value.bias": r(t_width),
                f"{b}{att}.output.dense.weight": r(t_width, t_width), f"{b}{att}.output.dense.bias": r(t_width),
                f"{b}{att}.output.LayerNorm.weight": 1 + r(t_width), f"{b}{att}.output.LayerNorm.bias": r(t_width),
            })  # fmt: skip
        sd.update({
            b + "intermediate.dense.weight": r(4 * t_width, t_width), b + "intermediate.dense.bias": r(4 * t_width),
            b + "output.dense.weight": r(t_width, 4 * t_width), b + "output.dense.bias": r(t_width),
            b + "output.LayerNorm.weight": 1 + r(t_width), b + "output.LayerNorm.bias": r(t_width),
        })  # fmt: skip
    sd.update({f"mlp.{k}": val for k, val in aesthetic_state(t_width, seed + 1).items()})
    for key in drop:
        sd.pop(key)
    med = {
        "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "hidden_size": t_width, "initializer_range": 0.02,
        "intermediate_size": 4 * t_width, "layer_norm_eps": 1e-12, "max_position_embeddings": 40,
        "model_type": "bert", "num_attention_heads": 4, "num_hidden_layers": layers, "pad_token_id": 0,
        "type_vocab_size": 2, "vocab_size": vocab, "encoder_width": 768, "add_cross_attention": True,
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.save(sd, folder / "ImageReward.pt")
    return folder


def _mha(q_in: torch.Tensor, kv_in: torch.Tensor, sd: dict[str, torch.Tensor], p: str, heads: int,
         key_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """BERT (med.py) attention: separate query/key/value Linear layers, scores / sqrt(d), additive key mask."""
    b, n, w = q_in.shape
    d = w // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, x.shape[1], heads, d).transpose(1, 2)

    q = split(q_in @ sd[p + "query.weight"].t() + sd[p + "query.bias"])
    k = split(kv_in @ sd[p + "key.weight"].t() + sd[p + "key.bias"])
    v = split(kv_in @ sd[p + "value.weight"].t() + sd[p + "value.bias"])
    att = q @ k.transpose(-1, -2) / math.sqrt(d)
    if key_mask is not None:
        att = att + (1.0 - key_mask[:, None, None, :].float()) * -10000.0
    return (att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)


def imagereward_reference(sd: dict[str, torch.Tensor], pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                          v_heads: int, t_heads: int) -> torch.Tensor:  # fmt: skip
    """ImageReward's score written out from the raw checkpoint (BLIP vit.py + med.py + the MLP head)."""
    v, t = "blip.visual_encoder.", "blip.text_encoder."
    conv = sd[v + "patch_embed.proj.weight"]
    x = F.conv2d(pixels, conv, sd[v + "patch_embed.proj.bias"], stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[v + "pos_embed"]
    b, n, w = x.shape
    d = w // v_heads
    layers = len({k.split(".")[3] for k in sd if k.startswith(v + "blocks.")})
    for i in range(layers):
        p = f"{v}blocks.{i}."
        h = F.layer_norm(x, (w,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = (h @ sd[p + "attn.qkv.weight"].t() + sd[p + "attn.qkv.bias"]).reshape(b, n, 3, v_heads, d)
        q, k, val = qkv.permute(2, 0, 3, 1, 4)
        o = ((q @ k.transpose(-1, -2)) * d**-0.5).softmax(-1) @ val
        x = x + o.transpose(1, 2).reshape(b, n, w) @ sd[p + "attn.proj.weight"].t() + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (w,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].t() + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].t() + sd[p + "mlp.fc2.bias"]
    image = F.layer_norm(x, (w,), sd[v + "norm.weight"], sd[v + "norm.bias"], eps=1e-6)

    e = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    tw = e.shape[-1]

    def ln(y: torch.Tensor, p: str) -> torch.Tensor:
        return F.layer_norm(y, (tw,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-12)

    h = ln(e, t + "embeddings.LayerNorm")
    n_text = len({k.split(".")[4] for k in sd if k.startswith(t + "encoder.layer.")})
    for i in range(n_text):
        p = f"{t}encoder.layer.{i}."
        for att, kv, key_mask in (("attention", h, mask), ("crossattention", image, None)):
            kv = h if att == "attention" else image
            a = _mha(h, kv, sd, p + att + ".self.", t_heads, key_mask)
            a = a @ sd[p + att + ".output.dense.weight"].t() + sd[p + att + ".output.dense.bias"]
            h = ln(a + h, p + att + ".output.LayerNorm")
        f = F.gelu(h @ sd[p + "intermediate.dense.weight"].t() + sd[p + "intermediate.dense.bias"])
        f = f @ sd[p + "output.dense.weight"].t() + sd[p + "output.dense.bias"]
        h = ln(f + h, p + "output.LayerNorm")
    r = h[:, 0]
    for i in (0, 2, 4, 6, 7):
        r = r @ sd[f"mlp.layers.{i}.weight"].t() + sd[f"mlp.layers.{i}.bias"]
    return (r.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
