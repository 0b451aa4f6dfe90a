"Shared pytest setup: paths of the project and of the reference annotation files."
from pathlib import Path
import os
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
# Real annotation files of DFEW, FERV39K, MAFW and AffectNet, next to the checkout when present.
SPLITS = Path(os.environ.get('UNILEARN_SPLITS', ROOT.parent / 'shared' / 'reference' / 'splits'))

@pytest.fixture
def splits_dir():
    if not SPLITS.exists(): pytest.skip(f"reference annotation files not found at {SPLITS} (set UNILEARN_SPLITS)")
    return SPLITS


class Toy:
    "Random tensors whose label is written in their mean (`shift` per class), with class names and ids: a learnable toy task."
    def __init__(self, n, shape, classes=3, seed=0, shift=0.3):
        import torch
        g = torch.Generator().manual_seed(seed)
        self.labels = [i % classes for i in range(n)]
        self.classes = [f'c{i}' for i in range(classes)]
        self.ids = [f'{seed}-{i}' for i in range(n)]
        self.x = [torch.randn(*shape, generator=g) + shift * l for l in self.labels]
    def __len__(self): return len(self.labels)
    def __getitem__(self, i): return self.x[i], self.labels[i]
