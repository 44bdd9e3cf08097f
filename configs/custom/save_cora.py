"""Save Cora (PyG's Planetoid reader, public split, row-normalised features) as one torch_geometric
``Data`` file, the input of ``configs/custom/pyg-data.yaml`` (docs/user-data.md).

    python configs/custom/save_cora.py --raw ../shared/data/planetoid --out data/cora-data.pt
    graphscale train configs/custom/pyg-data.yaml

Any graph of your own works the same way: build a ``Data`` with ``x``, ``edge_index``, ``y`` and a split
(``train_mask`` / ``val_mask`` / ``test_mask``, or ``split={'train': idx, 'valid': idx, 'test': idx}``),
then ``torch.save(data, FILE)``.
"""
import argparse
import os
import shutil
import sys
import tempfile

import torch
from torch_geometric.datasets import Planetoid
from torch_geometric.transforms import NormalizeFeatures

p = argparse.ArgumentParser(description="Save Cora as a torch_geometric Data file.")
p.add_argument("--raw", default="../shared/data/planetoid",
               help="folder holding Cora/raw/ind.cora.* (only read: it is copied to a temporary folder first)")
p.add_argument("--out", default="data/cora-data.pt", help="the Data file to write (default data/cora-data.pt)")
args = p.parse_args()
raw = os.path.join(args.raw, "Cora", "raw")
if not os.path.isdir(raw):
    sys.exit(f"save_cora.py: error: no folder {raw!r} (expected the Planetoid ind.cora.* files there)")
with tempfile.TemporaryDirectory() as tmp:  # Planetoid writes processed/ beside raw/: never into --raw
    shutil.copytree(raw, os.path.join(tmp, "Cora", "raw"))
    data = Planetoid(tmp, "Cora", transform=NormalizeFeatures())[0]
os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
torch.save(data, args.out)
print(f"wrote {args.out}: {data}")
