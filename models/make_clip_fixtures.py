#!/usr/bin/env python3
"""Generates the small random-weight CLIP fixtures the Rust tests check our CLIP path against.

Both kinds of checkpoint export_clip.py accepts are covered: a Hugging Face CLIPModel (text
tower of any length, with an attention mask) and an open_clip CLIP (77 tokens exactly). The
weights are random and tiny (width 8) so the ONNX files stay small; the tokenizer is CLIP's real
BPE. The reference token ids come from open_clip's own SimpleTokenizer and the embeddings from
PyTorch, so the test proves tokenizer.json, our padding and ONNX Runtime against the originals.

    pip install torch transformers open_clip_torch onnx
    python models/make_clip_fixtures.py     # writes models/fixtures/clip/
"""

import json
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
import export_clip  # noqa: E402

SENTENCES = [
    "a person is opening the door.",
    "Someone POURS water into a cup!",
    "the person's 2 dogs sit on a sofa, then leave",
    "café au lait",
    "a",
]
WIDTH, LAYERS, HEADS, DIM = 8, 2, 2, 16


def hf_model():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=WIDTH, intermediate_size=4 * WIDTH,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=0),
        vision_config=dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, image_size=32, patch_size=16),
        projection_dim=DIM,
    )
    return CLIPModel(config).eval()


def open_clip_model():
    import open_clip

    vision = open_clip.CLIPVisionCfg(layers=LAYERS, width=WIDTH, head_width=WIDTH // HEADS,
                                     image_size=32, patch_size=16)
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=WIDTH, heads=HEADS,
                                 layers=LAYERS)
    return open_clip.CLIP(embed_dim=DIM, vision_cfg=vision, text_cfg=text).eval()


def main():
    import open_clip

    torch.manual_seed(0)
    out = os.path.join(os.path.dirname(__file__), "fixtures", "clip")
    os.makedirs(out, exist_ok=True)
    tokenize = open_clip.tokenizer.SimpleTokenizer()
    ids = [[tokenize.sot_token_id] + tokenize.encode(s) + [tokenize.eot_token_id]
           for s in SENTENCES]
    reference = {"sentences": [{"text": s, "ids": i} for s, i in zip(SENTENCES, ids)]}
    for name, model, export in [("hf", hf_model(), export_clip.export_hf),
                                ("open_clip", open_clip_model(), export_clip.export_open_clip)]:
        with tempfile.TemporaryDirectory() as tmp:
            export(model, tmp, f"random {name} CLIP, width {WIDTH}")
            shutil.copy(os.path.join(tmp, "text.onnx"), os.path.join(out, f"{name}_text.onnx"))
        with torch.no_grad():
            for entry, row in zip(reference["sentences"], ids):
                tokens = torch.tensor([row])
                if name == "hf":
                    embedding = model.get_text_features(input_ids=tokens, attention_mask=torch.ones_like(tokens))
                    if not torch.is_tensor(embedding):
                        embedding = embedding.pooler_output
                else:
                    padded = torch.nn.functional.pad(tokens, (0, 77 - tokens.shape[1]))
                    embedding = model.encode_text(padded)
                entry[name] = [float(x) for x in embedding[0]]
    export_clip.bpe_tokenizer_json(os.path.join(out, "tokenizer.json"))
    from tokenizers import Tokenizer

    ours = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    for sentence, row in zip(SENTENCES, ids):
        assert ours.encode(sentence).ids == row, (sentence, ours.encode(sentence).ids, row)
    # A model that is no text encoder, for the error a misconfigured tower must give.
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixel_values"], ["image_embeds"])], "not_text",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", 3, 32, 32])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              os.path.join(out, "not_text.onnx"))
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
