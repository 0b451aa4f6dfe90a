"""The synthetic benchmark: deterministic per seed, written in layouts the real readers accept, label noise as stated."""
import csv, json
from pathlib import Path

import numpy as np
import pytest

from unilearn.synth import (write_benchmark, ensure_benchmark, benchmark_paths, sample_benchmark, EMOTIONS, AFFECTNET7,
                            MAFW_NAME, split_media_tree,
                            AFFECTNET_NAME, PRESETS)

MICRO = dict(clips=35, frames=(8, 10), clip_people=10, images=(21, 14), image_people=10, talking=3, talk_people=2, min_per_fold=1)
quiet = lambda *a: None

def files(root): return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*') if p.is_file())

def decoded(path):
    import av
    with av.open(str(path)) as c: return np.stack([f.to_ndarray(format='rgb24') for f in c.decode(video=0)])

def same(a, b, f):
    if f.endswith('.mp4'): return np.array_equal(decoded(a / f), decoded(b / f))
    return (a / f).read_bytes() == (b / f).read_bytes()

@pytest.fixture(scope='module')
def written(tmp_path_factory):
    base = tmp_path_factory.mktemp('synth')
    return {k: write_benchmark(base / k, MICRO, seed=s, workers=w, log=quiet) for k, s, w in (('a', 3, 2), ('b', 3, 1), ('c', 4, 2))}

def test_same_seed_same_files(written):
    a, b = written['a'], written['b']
    assert files(a) == files(b)
    assert [f for f in files(a) if f != 'synth.json' and not same(a, b, f)] == []
    ma, mb = json.loads((a / 'synth.json').read_text()), json.loads((b / 'synth.json').read_text())
    ma.pop('seconds'); mb.pop('seconds')
    assert ma == mb

def test_other_seed_other_benchmark(written):
    a, c = written['a'], written['c']
    assert not same(a, c, 'DFEW/clip_jpg_256/00001/00001.jpg')
    assert (a / 'DFEW/split/test_set_1.csv').read_text() != (c / 'DFEW/split/test_set_1.csv').read_text()

def test_layouts(written):
    a = written['a']
    for k in range(1, 6):
        for split in ('train', 'test'):
            rows = list(csv.reader(open(a / f'DFEW/split/{split}_set_{k}.csv')))
            assert rows[0] == ['video_name', 'label']
            assert all(len(r[0]) == 5 and r[0].isdigit() and 0 <= int(r[1]) < 7 for r in rows[1:])
    tests = [set(r['video_name'] for r in csv.DictReader(open(a / f'DFEW/split/test_set_{k}.csv'))) for k in range(1, 6)]
    assert sum(map(len, tests)) == len(set().union(*tests)) == MICRO['clips']          # 5 disjoint test folds
    frames = sorted((a / 'DFEW/clip_jpg_256/00001').iterdir())
    assert [p.name for p in frames][:2] == ['00001.jpg', '00002.jpg'] and 8 <= len(frames) <= 10
    line = (a / 'AffectNet/train_affectnet7.txt').read_text().splitlines()[0]
    rel, lab = line.rsplit(' ', 1)
    assert (a / 'AffectNet' / rel).is_file() and rel.endswith('.png') and 0 <= int(lab) < 7
    mp4 = sorted((a / 'VoxCeleb2/dev/mp4').rglob('*.mp4'))
    assert len(mp4) == MICRO['talking']
    assert all(p.parent.parent.name.startswith('id') and len(p.parent.name) == 11 and p.name == '00001.mp4' for p in mp4)

def test_real_readers_accept_it(written):
    from unilearn.data import DFEW, AffectNet, VoxCeleb2
    p = benchmark_paths(written['a'])
    for fold in range(1, 6):
        tr, te = DFEW(p['dfew'], fold=fold, split='train', num_frames=4, stride=2, img_size=32), \
                 DFEW(p['dfew'], fold=fold, split='test', num_frames=4, stride=2, img_size=32, num_clips=1)
        assert len(tr) + len(te) == MICRO['clips']
    x, y = tr[0]
    assert tuple(x.shape) == (3, 4, 32, 32) and 0 <= y < 7
    im = AffectNet(p['affectnet'], split='test', img_size=32)
    assert len(im) == MICRO['images'][1] and tuple(im[0][0].shape) == (3, 32, 32)
    assert VoxCeleb2(p['voxceleb2'], num_frames=4, stride=2, img_size=32)[0][0].shape == (3, 4, 32, 32)
    # labels the readers return are the written ones, by class name, in each dataset's own class order
    meta = {r['name']: r for r in csv.DictReader(open(written['a'] / 'samples.csv'))}
    assert [im.classes[l] for l in im.labels] == [AFFECTNET_NAME.get(meta[i]['label'], meta[i]['label']) for i in im.ids]
    assert [tr.classes[l] for l in tr.labels] == [meta[i]['label'] for i in tr.ids]
    assert list(im.classes) == list(AFFECTNET7) and list(tr.classes) == list(EMOTIONS)

def test_label_noise_as_stated():
    B = sample_benchmark('default', seed=0, label_noise=.1)
    flipped = np.r_[B['video']['table']['flipped'], B['image']['table']['flipped']]
    assert abs(flipped.mean() - .1) < .02
    T = B['video']['table']
    assert (T['label'][T['flipped']] != T['true_label'][T['flipped']]).all()
    assert (T['label'][~T['flipped']] == T['true_label'][~T['flipped']]).all()
    clean = sample_benchmark('default', seed=0, label_noise=0.)
    assert (clean['video']['table']['label'] == clean['video']['table']['true_label']).all()

def test_written_noise_matches_samples_csv(written):
    rows = [r for r in csv.DictReader(open(written['a'] / 'samples.csv')) if r['part'] != 'voxceleb2']
    meta = json.loads((written['a'] / 'synth.json').read_text())
    assert meta['label_noise'] == .05
    assert meta['labels_flipped'] == sum(r['label'] != r['true_label'] for r in rows)

def test_dfew_like_imbalance():
    T = sample_benchmark('default', seed=0)['video']['table']
    counts = np.bincount(T['true_label'], minlength=7)
    assert counts.argmin() == EMOTIONS.index('Disgust') and counts[EMOTIONS.index('Disgust')] / counts.sum() < .03

def test_ensure_reuses_and_regenerates(written, tmp_path):
    msgs = []
    assert ensure_benchmark(written['a'], MICRO, seed=3, log=msgs.append) == written['a']
    assert 'found' in msgs[-1]
    root = write_benchmark(tmp_path / 'x', MICRO, seed=5, log=quiet)
    (root / 'synth.json').unlink()                      # an interrupted generation leaves no synth.json
    msgs = []
    ensure_benchmark(root, MICRO, seed=5, log=msgs.append)
    assert (root / 'synth.json').exists() and any('written' in m for m in msgs)

def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='huge'): write_benchmark(tmp_path, 'huge', log=quiet)
    with pytest.raises(ValueError, match='even'): write_benchmark(tmp_path, MICRO, size=63, log=quiet)
    with pytest.raises(ValueError, match='label_noise'): sample_benchmark(MICRO, label_noise=1.5)
    with pytest.raises(ValueError, match='lacks'): sample_benchmark(dict(clips=10))
    assert set(PRESETS) == {'tiny', 'small', 'default', 'large'}

def test_ferv39k_and_mafw_layouts(tmp_path):
    "extra= writes FERV39K (the DFEW-role clips, fold 5 as test) and an 11-class MAFW role, read by the real readers."
    from unilearn.data import FERV39K, MAFW, MAFW_CLASSES
    root = write_benchmark(tmp_path / 'b', MICRO, seed=3, extra=('ferv39k', 'mafw'), log=quiet)
    p = benchmark_paths(root)
    tr, te = FERV39K(p['ferv39k'], num_frames=4, img_size=16), FERV39K(p['ferv39k'], split='test', num_frames=4, img_size=16)
    dfew5 = [r for r in csv.DictReader(open(root / 'DFEW/split/test_set_5.csv'))]
    assert len(tr.items) + len(te.items) == MICRO['clips'] and len(te.items) == len(dfew5)
    assert [te.classes[l] for l in te.labels[::2]] == [EMOTIONS[int(r['label'])] for r in dfew5]   # same clips, same labels
    meta = {r['name']: r for r in csv.DictReader(open(root / 'samples.csv')) if r['part'] == 'mafw'}
    assert len(meta) == MICRO['clips']
    for k in range(1, 6):
        ds = MAFW(p['mafw'], fold=k, num_frames=4, img_size=16)
        assert ds.classes == MAFW_CLASSES
        assert [ds.classes[l] for l in ds.labels] == [MAFW_NAME[meta[i]['label']] for i in ds.ids]
    assert len({r['label'] for r in meta.values()}) > 7                     # classes beyond the 7 shared ones
    assert ensure_benchmark(root, MICRO, seed=3, extra=('mafw', 'ferv39k'), log=quiet) == root

def test_rewriting_replaces_and_foreign_folders_are_refused(tmp_path):
    root = write_benchmark(tmp_path / 'b', {**MICRO, 'frames': (14, 16)}, seed=0, log=quiet)
    (root / 'DFEW/clip_jpg_256/00001/00099.jpg').write_bytes(b'stale')
    msgs = []
    ensure_benchmark(root, MICRO, seed=0, log=msgs.append)
    assert any('replacing it' in m for m in msgs)
    assert all(8 <= len(list(d.iterdir())) <= 10 for d in (root / 'DFEW/clip_jpg_256').iterdir())
    (tmp_path / 'mine').mkdir(); (tmp_path / 'mine' / 'notes.txt').write_text('x')
    with pytest.raises(FileExistsError, match='holds no benchmark of unilearn.synth'):
        write_benchmark(tmp_path / 'mine', MICRO, log=quiet)
    assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'x'

def test_split_media_tree_every_listed_item(splits_dir, tmp_path):
    "Every row of the real AffectNet test list gets an image, and the reader finds them all."
    from unilearn.data import AffectNet
    root = split_media_tree('AffectNet', splits_dir, tmp_path / 'an')
    ds = AffectNet(root, split='test', img_size=16)
    assert len(ds.items) == 3267 and ds[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match='name must be one of'):
        split_media_tree('CK+', splits_dir, tmp_path)
