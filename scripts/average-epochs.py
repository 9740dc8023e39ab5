#!/usr/bin/env python3
"""Writes a model folder whose weights are the mean of several epoch folders' weights.

Reproduces README's "The kept epoch averaged with its neighbours" for any window of epochs,
from the folders `train.keep_epochs` leaves (OUT/epochs/001, ...). Training averages the kept
epoch with its neighbours itself (`train.neighbour_epochs`); this measures other windows.

    scripts/average-epochs.py OUT_FOLDER EPOCH_FOLDER...

The card is the last folder's. Standard library only: safetensors is an 8-byte header length,
a JSON header and the raw little-endian tensors.
"""
import array
import json
import shutil
import struct
import sys
from pathlib import Path


def read(folder):
    data = (Path(folder) / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[: 8 + size], data[8 + size :]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, folders = Path(sys.argv[1]), sys.argv[2:]
    models = [read(folder) for folder in folders]
    header, prefix, first = models[0]
    body = bytearray(first)
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "F32":
            sys.exit(f"{folders[0]}: tensor {name} is {entry['dtype']}, not F32")
        sums = None
        for folder, (other, _, tensors) in zip(folders, models):
            if name not in other:
                sys.exit(f"{folder}: no tensor {name}")
            start, end = other[name]["data_offsets"]
            values = array.array("f", tensors[start:end])
            sums = values if sums is None else array.array("f", map(sum, zip(sums, values)))
        mean = array.array("f", (v / len(models) for v in sums))
        start, end = entry["data_offsets"]
        body[start:end] = mean.tobytes()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").write_bytes(prefix + bytes(body))
    shutil.copy(Path(folders[-1]) / "model.json", out / "model.json")


if __name__ == "__main__":
    main()
