#!/usr/bin/env python3
"""Exports a CLIP checkpoint into the files momentminer's captioner reads.

Run it where the weights are (no model hub is reachable from momentminer's machines):

    pip install torch transformers open_clip_torch onnx
    python models/export_clip.py --hf openai/clip-vit-base-patch32 --out models/clip-b32
    python models/export_clip.py --open-clip ViT-B-32 --pretrained laion2b_s34b_b79k --out models/clip-b32

and then point the `[caption]` section at it:

    clip_text_model = "models/clip-b32/text.onnx"
    clip_tokenizer  = "models/clip-b32/tokenizer.json"

What it writes into --out:
  text.onnx       inputs  input_ids int64 (batch, tokens)       [Hugging Face: any length;
                          attention_mask int64 (batch, tokens)   open_clip: exactly 77, padded
                                                                 with 0 by momentminer]
                  output  text_embeds float32 (batch, dim)       projected, not normalised
  image.onnx      input   pixel_values float32 (batch, 3, S, S)  resized to S, centre-cropped,
                                                                 scaled to [0, 1], normalised by
                                                                 export.json's mean and std
                  output  image_embeds float32 (batch, dim)      what the `clip` stream of a
                                                                 feature file must hold
  tokenizer.json  CLIP's byte-level BPE for the `tokenizers` library (lower-cased, with
                  <|startoftext|> and <|endoftext|> around each text)
  export.json     dim, image size, mean, std, context length, source

The visual features momentminer captions must come from the image tower of the same model.
"""

import argparse
import gzip
import json
import os
import tempfile

import torch

OPSET = 17


class HfText(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).text_embeds


class HfImage(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).image_embeds


class OpenClipText(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model.encode_text(input_ids)


class OpenClipImage(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)


def bpe_tokenizer_json(out_path):
    """tokenizer.json for CLIP's byte-level BPE: open_clip ships the merges, and the vocabulary
    is derived from them as CLIP's own SimpleTokenizer derives it; text is NFC-normalised,
    whitespace-collapsed and lower-cased, and split by CLIP's regular expression."""
    import open_clip.tokenizer as oct
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    with gzip.open(oct.default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_symbols = list(oct.bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.BPE(vocab=ids, merges=[tuple(m.split()) for m in merges],
                                     unk_token="<|endoftext|>", end_of_word_suffix="</w>",
                                     continuing_subword_prefix=""))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    split = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[(t, ids[t]) for t in ["<|startoftext|>", "<|endoftext|>"]])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tokenizer.save(out_path)


def export_pair(text, image, image_size, context, out, text_inputs):
    text.eval()
    image.eval()
    ids = torch.tensor([[49406, 320, 1125, 539, 49407]], dtype=torch.long)
    if context is not None:
        ids = torch.nn.functional.pad(ids, (0, context - ids.shape[1]))
    batch_only = {0: "batch"}
    # Traced with gradients on: under no_grad, torch's MultiheadAttention takes a fused fast
    # path that has no ONNX export.
    if text_inputs == ["input_ids", "attention_mask"]:
        args = (ids, torch.ones_like(ids))
        axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    else:
        args = (ids,)
        axes = {"input_ids": batch_only}
    axes["text_embeds"] = batch_only
    torch.onnx.export(text, args, os.path.join(out, "text.onnx"), input_names=text_inputs,
                      output_names=["text_embeds"], dynamic_axes=axes, opset_version=OPSET,
                      dynamo=False)
    pixels = torch.zeros(1, 3, image_size, image_size)
    torch.onnx.export(image, (pixels,), os.path.join(out, "image.onnx"),
                      input_names=["pixel_values"], output_names=["image_embeds"],
                      dynamic_axes={"pixel_values": batch_only, "image_embeds": batch_only},
                      opset_version=OPSET, dynamo=False)


def export_hf(model, out, source):
    """A transformers CLIPModel (already loaded) → out/."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    # The towers' own configs carry a projection size of their own; the pair's is the one used.
    model.config.text_config.projection_dim = model.config.projection_dim
    model.config.vision_config.projection_dim = model.config.projection_dim
    text = CLIPTextModelWithProjection(model.config.text_config)
    text.text_model.load_state_dict(model.text_model.state_dict())
    text.text_projection.load_state_dict(model.text_projection.state_dict())
    image = CLIPVisionModelWithProjection(model.config.vision_config)
    image.vision_model.load_state_dict(model.vision_model.state_dict())
    image.visual_projection.load_state_dict(model.visual_projection.state_dict())
    size = model.config.vision_config.image_size
    export_pair(HfText(text), HfImage(image), size, None, out, ["input_ids", "attention_mask"])
    return {
        "source": source,
        "dim": model.config.projection_dim,
        "image_size": size,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "context_length": model.config.text_config.max_position_embeddings,
        "text_inputs": ["input_ids", "attention_mask"],
    }


def export_open_clip(model, out, source):
    """An open_clip CLIP (already loaded) → out/; its text tower takes exactly 77 tokens."""
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    context = model.context_length
    export_pair(OpenClipText(model), OpenClipImage(model), size, context, out, ["input_ids"])
    mean = getattr(model.visual, "image_mean", None) or [0.48145466, 0.4578275, 0.40821073]
    std = getattr(model.visual, "image_std", None) or [0.26862954, 0.26130258, 0.27577711]
    return {
        "source": source,
        "dim": model.text_projection.shape[1] if model.text_projection is not None else None,
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
        "context_length": context,
        "text_inputs": ["input_ids"],
    }


def finish(out, meta):
    bpe_tokenizer_json(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "export.json"), "w") as f:
        json.dump(meta, f, indent=2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf", help="a Hugging Face CLIP checkpoint (folder or hub name)")
    source.add_argument("--open-clip", help="an open_clip model name, e.g. ViT-B-32")
    parser.add_argument("--pretrained", help="open_clip: pretrained tag or checkpoint file")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.hf:
        from transformers import CLIPModel

        meta = export_hf(CLIPModel.from_pretrained(args.hf).eval(), args.out, args.hf)
    else:
        import open_clip

        model, _, _ = open_clip.create_model_and_transforms(args.open_clip, pretrained=args.pretrained)
        meta = export_open_clip(model.eval(), args.out, f"{args.open_clip}:{args.pretrained}")
    finish(args.out, meta)
    print(f"wrote {args.out}/text.onnx, image.onnx, tokenizer.json, export.json")


if __name__ == "__main__":
    main()
