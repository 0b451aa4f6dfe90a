"""Fault cases of the data readers (`unilearn.data`, `unilearn.media`) and the synthetic benchmark (`unilearn.synth`):
broken split files, missing or broken media, training splits that hold test items, benchmarks written over others.
Each case is `(name, input, outcome)`: `input(tmp_path)` runs it, the outcome is `('error', fragment of the one-line
message)` or `'handled'` (then `input` asserts what handling means)."""
import shutil, warnings
from pathlib import Path

import numpy as np
from PIL import Image

from unilearn.data import DFEW, FERV39K, MAFW, AffectNet, write_frames, write_video
from unilearn.synth import write_benchmark, benchmark_paths

MICRO = dict(clips=35, frames=(8, 10), clip_people=10, images=(21, 14), image_people=10, talking=2, talk_people=2, min_per_fold=1)


def frames(n, seed=0): return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def dfew(tmp, train='00001,0\n00002,1\n', test='00003,2\n', fold=1) -> Path:
    "A DFEW with clips 00001-00003 (00003 an mp4) and fold `fold`'s split files."
    root = Path(tmp) / 'DFEW'
    for k in (1, 2): write_frames(root / 'clip_jpg_256' / f'{k:05d}', frames(6, k))
    write_video(root / 'clip_jpg_256' / '00003.mp4', frames(6, 3))
    (root / 'split').mkdir(exist_ok=True)
    for s, rows in (('train', train), ('test', test)):
        if rows is not None: (root / 'split' / f'{s}_set_{fold}.csv').write_text('video_name,label\n' + rows)
    return root


def read(root, **kw): return DFEW(root, num_frames=4, stride=1, img_size=16, mode='test', num_clips=1, **kw)


def split_bytes(t, data:bytes):
    root = dfew(t); (root / 'split' / 'train_set_1.csv').write_bytes(data); return read(root)


def copied_test_clip(t):
    root = dfew(t, train='00001,0\n00007,2\n')
    shutil.copytree(root / 'clip_jpg_256' / '00002', root / 'clip_jpg_256' / '00007')
    (root / 'split' / 'test_set_1.csv').write_text('video_name,label\n00002,1\n')
    return read(root)


def overlap_allowed(t):
    ds = read(dfew(t, train='00001,0\n00003,2\n'), allow_overlap=True)
    assert ds.ids == ['00001', '00003']


def broken_frame(t, data:bytes):
    root = dfew(t)
    (root / 'clip_jpg_256' / '00002' / '00003.jpg').write_bytes(data)
    return read(root)[1]


def skipped_broken_clip(t):
    root = dfew(t)
    (root / 'clip_jpg_256' / '00002' / '00003.jpg').write_bytes(b'junk')
    ds = read(root, on_error='skip')
    assert ds[1][1] == 0 and [r['id'] for r in ds.epoch_report()] == ['00002']   # the next clip stood in, and it is reported


def regenerate(t):
    "A benchmark written over one of other settings leaves nothing of the old one."
    old = write_benchmark(t / 'b', {**MICRO, 'frames': (14, 16)}, seed=0, log=lambda *a: None)
    (old / 'DFEW/clip_jpg_256/00001/00099.jpg').write_bytes(b'stale')
    new = write_benchmark(t / 'b', MICRO, seed=1, log=lambda *a: None)
    for d in (new / 'DFEW/clip_jpg_256').iterdir(): assert 8 <= len(list(d.iterdir())) <= 10, d
    ds = DFEW(benchmark_paths(new)['dfew'], fold=1, split='test', num_frames=4, img_size=16)
    assert len(ds.items) == 7


def foreign_folder(t):
    (t / 'mine').mkdir(); (t / 'mine' / 'thesis.tex').write_text('mine')
    return write_benchmark(t / 'mine', MICRO, log=lambda *a: None)


def mafw_txt(t, text):
    root = t / 'MAFW'; write_frames(root / 'frames_crop_align_224' / '00001', frames(4))
    (root / 'set_1').mkdir(); (root / 'set_1' / 'train.txt').write_text(text)
    return MAFW(root, fold=1)


def ferv(t, text):
    root = t / 'FERV39K'; write_frames(root / '2_ClipsforFaceCrop' / 'Crime' / 'Angry' / '0063', frames(4))
    (root / 'train.csv').write_text(text)
    return FERV39K(root)


def gray_16bit_frames(t):
    d = t / 'DFEW' / 'clip_jpg_256' / '00001'; d.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 100 * 257, np.uint16)).save(d / '1.png')
    Image.fromarray(np.full((8, 8), 100, np.uint8), 'L').save(d / '2.png')
    (t / 'DFEW' / 'split').mkdir(); (t / 'DFEW' / 'split' / 'train_set_1.csv').write_text('video_name,label\n00001,0\n')
    x, _ = DFEW(t / 'DFEW', num_frames=2, stride=1, mode='test', num_clips=1, transform=lambda v: v)[0]
    assert (x == 100).all()


CASES = [
    ('split file with a non-UTF-8 byte', lambda t: split_bytes(t, b'video_name,label\n00001,0\n0000\xe9,1\n'),
     ('error', 'train_set_1.csv, row 3, column 5: byte 0xe9 is not UTF-8')),
    ('split file with only a header', lambda t: split_bytes(t, b'video_name,label\n'), ('error', 'only a header, no rows')),
    ('empty split file', lambda t: split_bytes(t, b''), ('error', 'empty annotation file')),
    ('split file with the wrong header', lambda t: split_bytes(t, b'name,label\n00001,0\n'), ('error', "row 1: expected header")),
    ('row with an unknown label', lambda t: split_bytes(t, b'video_name,label\n00001,0\n00002,9\n'), ('error', 'row 3: unknown label')),
    ('row with a duplicate id', lambda t: split_bytes(t, b'video_name,label\n00001,0\n00001,2\n'), ('error', "row 3: duplicate id")),
    ('DFEW file mixing 0- and 1-based labels', lambda t: split_bytes(t, b'video_name,label\n00001,0\n00002,7\n'), ('error', 'mixes 0-based')),
    ('clip listed but not on disk', lambda t: split_bytes(t, b'video_name,label\n00001,0\n00042,1\n'), ('error', "row 3: clip '00042' not found")),
    ('annotation= that does not exist', lambda t: read(dfew(t), annotation=t / 'nope.csv'), ('error', 'is neither a file nor a folder')),
    ('training split holding a test clip', lambda t: read(dfew(t, train='00001,0\n00003,2\n')),
     ('error', "row 3, id '00003', the same id")),
    ('test clip copied into training under a new name', copied_test_clip, ('error', "the same media as test id '00002'")),
    ('overlap allowed on purpose', overlap_allowed, 'handled'),
    ('truncated JPEG frame', lambda t: broken_frame(t, b'\xff\xd8\xff\xe0 cut'), ('error', "row 3 (id '00002'")),
    ('frame that is not an image', lambda t: broken_frame(t, b'hello'), ('error', '00003.jpg: cannot read image')),
    ('broken clip with on_error=skip', skipped_broken_clip, 'handled'),
    ('16-bit and grey frames', gray_16bit_frames, 'handled'),
    ('MAFW txt row with an unknown class', lambda t: mafw_txt(t, '00001.mp4 joy\n'), ('error', "row 1: unknown label 'joy'")),
    ('FERV39K path and label disagree', lambda t: ferv(t, 'path,id\nCrime/Angry/0063,3\n'), ('error', "path says 'Angry' but id 3")),
    ('benchmark regenerated over other settings', regenerate, 'handled'),
    ('benchmark written into a folder of other files', foreign_folder, ('error', 'holds no benchmark of unilearn.synth')),
]
