"""Research runs from the command line on small media trees in each dataset's real layout, built from the real split files
(`../shared/reference/splits`, skipped with a message when absent; MAFW through `unilearn.synth.split_media_tree`):
MAFW fold 1 (an 11-way video head), FERV39K (one split),
DFEW with `--fold all` followed by `unilearn pool`, checked against scikit-learn on the concatenated predictions."""
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SPLITS

BIN = Path(sys.executable).parent
TINY = ['--embed_dim', '32', '--depth', '2', '--heads', '2', '--img_size', '32', '--frames', '4', '--patch', '8', '--epochs', '1',
        '--warmup', '0', '--video_bs', '4', '--workers', '0', '--precision', 'fp32', '--mixup', '0', '--cutmix', '0',
        '--valid_pct', '0.25', '--device', 'cpu']

def _frames(folder:Path, label:int, n:int=4, ext:str='.jpg'):
    "n tiny frames whose colour follows the label, with noise of the clip's own (no two clips share their media)."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(folder))) % 2**32)
    base = np.array([(37 * label) % 256, (91 * label) % 256, (53 * label) % 256], np.int16)
    for i in range(n):
        rgb = np.clip(base + rng.integers(-40, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f'{i + 1:05d}{ext}')

def _rows(path:Path) -> tuple[str, list[str]]:
    lines = path.read_text().splitlines()
    return lines[0], [l for l in lines[1:] if l.strip()]

def _pick(rows, label_of, per_class:int) -> list[str]:
    "The first `per_class` rows of every class, in file order."
    seen, out = {}, []
    for r in rows:
        y = label_of(r)
        if seen.get(y, 0) < per_class: seen[y] = seen.get(y, 0) + 1; out.append(r)
    return out

def _write_split(path:Path, header:str, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join([header, *rows]) + '\n')

def dfew_tree(root:Path, ann:Path, per_class:int=1):
    "DFEW: clip_jpg_256/<id>/*.jpg for `per_class` clips per class of every test fold; the five folds' split files restricted to them."
    src = SPLITS / 'DFEW'
    keep = {}
    for k in range(1, 6):
        _, rows = _rows(src / f'test_set_{k}.csv')
        for r in _pick(rows, lambda r: r.split(',')[1], per_class): keep[r.split(',')[0]] = int(r.split(',')[1])
    for s in ('train', 'test'):
        for k in range(1, 6):
            h, rows = _rows(src / f'{s}_set_{k}.csv')
            _write_split(ann / f'{s}_set_{k}.csv', h, [r for r in rows if r.split(',')[0] in keep])
    for i, y in keep.items(): _frames(root / 'clip_jpg_256' / i, y)
    return keep

def ferv39k_tree(root:Path, train_per_class:int=4, test_per_class:int=2):
    "FERV39K: 2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>/*.jpg and {train,test}.csv (+ label_index.txt) restricted to a few clips a class."
    root.mkdir(parents=True, exist_ok=True)
    (root / 'label_index.txt').write_text((SPLITS / 'FERV39K' / 'label_index.txt').read_text())
    for s, n in (('train', train_per_class), ('test', test_per_class)):
        h, rows = _rows(SPLITS / 'FERV39K' / f'{s}.csv')
        rows = _pick(rows, lambda r: r.split(',')[1], n)
        _write_split(root / f'{s}.csv', h, rows)
        for r in rows: _frames(root / '2_ClipsforFaceCrop' / r.split(',')[0], int(r.split(',')[1]))

def unilearn(*args, timeout=600):
    r = subprocess.run([str(BIN / 'unilearn'), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout

def test_mafw_fold1_has_an_11_way_head(splits_dir, tmp_path):
    from unilearn.interop import checkpoint_config, load_checkpoint
    from unilearn.metrics import load_predictions
    from unilearn.synth import split_media_tree
    split_media_tree('MAFW', splits_dir, tmp_path / 'MAFW', limit=120)   # the authors' layout: anno/single/no_caption/set_N
    out = unilearn('finetune', '--mafw', tmp_path / 'MAFW', '--fold', '1', '--out', tmp_path / 'run', '--stride', '1', *TINY)
    run = tmp_path / 'run' / 'fold_1'
    net = load_checkpoint(run / 'best.safetensors')
    assert net.head['video'].out_features == 11
    info = checkpoint_config(run / 'last.safetensors')['info']
    assert info['classes']['video'][:3] == ['anger', 'anxiety', 'contempt'] and info['fold'] == 1 and info['dataset'] == 'mafw'
    assert info['run_config']['mafw'] == str(tmp_path / 'MAFW')          # the resolved configuration travels with the weights
    df = load_predictions(run / 'predictions.csv')
    assert len(df) == 120 and df.attrs['classes']['video'] == info['classes']['video']
    assert 'epoch 1/1' in out                                               # no terminal: one line per epoch
    unilearn('analyze', run / 'best.safetensors', '--mafw', tmp_path / 'MAFW', '--embedding', 'pca')  # Figure 4 from it
    gates = pd.read_csv(run / 'analysis' / 'gates.csv')
    assert set(gates.task) == {'video'} and len(gates) == 1                # one MoAE layer (the later half of 2 blocks)
    assert (run / 'analysis' / 'analysis.html').stat().st_size > 10_000 and (run / 'analysis' / 'embedding.csv').is_file()

def test_ferv39k_one_split(splits_dir, tmp_path):
    ferv39k_tree(tmp_path / 'FERV39K')
    unilearn('finetune', '--ferv39k', tmp_path / 'FERV39K', '--out', tmp_path / 'run', *TINY)
    run = tmp_path / 'run'
    assert {'best.safetensors', 'last.safetensors', 'predictions.csv', 'predictions_last.csv', 'config.json'} <= {p.name for p in run.iterdir()}
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['stride_used'] == 1 and cfg['fold_run'] is None               # FERV39K's published stride, no folds

def test_dfew_all_folds_then_pool(splits_dir, tmp_path):
    from sklearn.metrics import balanced_accuracy_score, accuracy_score
    keep = dfew_tree(tmp_path / 'DFEW', tmp_path / 'splits')
    out = tmp_path / 'run'
    unilearn('finetune', '--dfew', tmp_path / 'DFEW', '--annotation', tmp_path / 'splits', '--fold', 'all', '--out', out, *TINY,
             timeout=900)
    files = sorted(out.glob('fold_*/predictions.csv'))
    assert [f.parent.name for f in files] == [f'fold_{k}' for k in range(1, 6)]
    df = pd.concat([pd.read_csv(f, dtype={'id': str}) for f in files])
    assert sorted(df.id) == sorted(keep) and (df.label == df.id.map(keep)).all()   # every clip once, with its own label
    stdout = unilearn('pool', out, '--resamples', '200')
    res = json.loads((out / 'results.json').read_text())['tasks']['video']
    assert res['pooled']['uar'] == pytest.approx(100 * balanced_accuracy_score(df.label, df.pred), abs=1e-9)
    assert res['pooled']['war'] == pytest.approx(100 * accuracy_score(df.label, df.pred), abs=1e-9)
    assert res['pooled']['n'] == len(keep) and set(res['folds']) == {'1', '2', '3', '4', '5'}
    lo, hi = res['pooled']['uar_ci']
    assert lo <= res['pooled']['uar'] <= hi
    for k, f in zip(range(1, 6), files):
        d = pd.read_csv(f)
        assert res['folds'][str(k)]['uar'] == pytest.approx(100 * balanced_accuracy_score(d.label, d.pred), abs=1e-9)
    assert 'video pooled: UAR' in stdout and 'recall (pooled)' in stdout
