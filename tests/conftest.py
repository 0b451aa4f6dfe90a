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
