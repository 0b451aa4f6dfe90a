"""unilearn.panels: the widgets are driven as a user would (values set, buttons clicked, plot clicks delivered as
the browser sends them) and what the figures then hold is checked against numbers computed independently
(scikit-learn, numpy, unilearn.mae/moae/metrics). One test runs nbs/07_panels.ipynb in JupyterLab in headless
Chromium (Debian's chromium + playwright-core from tests/browser; `tests/browser/setup.sh` installs them)."""
import io, json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.metrics import confusion_matrix, recall_score
from sklearn.metrics.pairwise import cosine_similarity

from conftest import ROOT, NBS
from unilearn import panels as P

BIN = Path(sys.executable).parent
BROWSER = ROOT / 'tests' / 'browser'


def click(fig, x, y, index, trace=0):
    "Deliver a plotly click on point `index` at (x, y) of `trace` the way the browser front end sends it."
    fig._js2py_pointsCallback = dict(event_type='plotly_click',
                                     points=dict(xs=[x], ys=[y], point_indexes=[index], trace_indexes=[trace]))


# ---------------------------------------------------------------- reconstruction
def test_reconstruction_panel_shows_selected_sample_and_frame():
    rec = P.example_reconstruction(batch=3, frames=6, size=16, patch=4, seed=3)
    panel = P.ReconstructionPanel(rec, labels=['a', 'b', 'c'])
    for s, t in [(0, 0), (2, 5), (1, 3)]:
        panel.sample.value, panel.time.value = s, t
        for j, key in enumerate(('original', 'masked', 'recon')):
            assert np.array_equal(P.decode_png_uri(panel.fig.data[j].source), P.to_uint8(rec[key][s, t]))
        assert f"loss {float(rec['loss'][s]):.4f}" in panel.loss_label.value
        assert list(panel.loss_fig.data[0].marker.color).index('#d62728') == s   # selected bar highlighted
    click(panel.loss_fig, 'c', float(rec['loss'][2]), 2)
    assert panel.sample.value == 2


def test_reconstruction_panel_reruns_mae_on_new_mask_ratio():
    from unilearn.mae import create_mae, reconstruct
    torch.manual_seed(0)
    mae = create_mae(dict(embed_dim=24, depth=1, num_heads=2), img_size=16, all_frames=4, patch_size=4, decoder_depth=1)
    x = torch.randn(2, 3, 4, 16, 16)   # 2 x 4 x 4 = 32 tokens
    panel = P.ReconstructionPanel(mae, x, seed=5)
    assert panel.mask_ratio.value == 0.95 and not panel.mask_ratio.disabled
    for ratio in (0.25, 0.75):
        panel.mask_ratio.value = ratio
        direct = reconstruct(mae, x, mask_ratio=ratio, seed=5)
        assert panel.rec['mask'].mean() == pytest.approx(ratio)
        np.testing.assert_allclose(panel.rec['recon'], direct['recon'].numpy(), atol=1e-6)
        np.testing.assert_allclose(panel.loss_fig.data[0].y, direct['loss'].numpy(), rtol=1e-5)
    panel.sample.value, panel.time.value = 1, 2
    assert np.array_equal(P.decode_png_uri(panel.fig.data[1].source), P.to_uint8(direct['masked'][1, 2]))


def test_reconstruction_figure_has_time_slider_and_rejects_bad_input():
    rec = P.example_reconstruction(batch=2, frames=4, size=16, patch=4)
    fig = P.reconstruction_figure(rec)
    assert len(fig.data) == 6 and len(fig.frames) == 4 and len(fig.layout.sliders[0].steps) == 4
    assert np.array_equal(P.decode_png_uri(fig.frames[3].data[4].source), P.to_uint8(rec['masked'][1, 3]))
    assert not P.reconstruction_figure(rec, frame=2).frames
    with pytest.raises(ValueError, match="'masked'"): P.as_reconstruction(dict(rec, masked=rec['masked'][..., :2]))
    with pytest.raises(KeyError, match='recon'):
        P.as_reconstruction({'original': rec['original'], 'masked': rec['masked']})
    with pytest.raises(IndexError, match='frame 9'): P.reconstruction_figure(rec, frame=9)


# ---------------------------------------------------------------- gates
def test_gate_values_from_counts():
    count = torch.tensor([[3., 1., 0., 4.], [2., 2., 2., 2.]])
    stats = dict(layers=[6, 7], count={'image': count, 'video': count.flip(1)},
                 weight={'image': count / 10, 'video': count / 10},
                 tokens={'image': 4, 'video': 4})
    np.testing.assert_allclose(P.gate_values(stats, 'image'), [[3 / 8, 1 / 8, 0, 4 / 8], [.25] * 4])
    np.testing.assert_allclose(P.gate_values(stats, 'video', 'per_token'), [[1, 0, .25, .75], [.5] * 4])
    np.testing.assert_allclose(P.gate_values(stats, 'image', 'weight'), count.numpy() / 10)
    fig = P.gate_figure(stats)
    assert list(fig.data[0].y) == ['block 6', 'block 7'] and list(fig.data[1].x) == ['E0', 'E1', 'E2', 'E3']
    with pytest.raises(ValueError, match=r'\[L=2, E\]'): P.as_gate_stats(dict(stats, count={'image': count[:1]}))
    with pytest.raises(ValueError, match='value must be'): P.gate_values(stats, 'image', 'median')


def test_gate_panel_class_and_value_pickers_and_live_update():
    per = {'all': P.example_gate_stats(seed=0), 'happy': P.example_gate_stats(seed=1),
           'sad': P.example_gate_stats(seed=2)}
    panel = P.GatePanel(per)
    assert list(panel.cls.options) == ['all', 'happy', 'sad'] and panel.refresh.disabled and panel.per_class.disabled
    panel.cls.value = 'happy'
    np.testing.assert_allclose(np.array(panel.fig.data[1].z), P.gate_values(per['happy'], 'video'))
    panel.value.value = 'count'
    np.testing.assert_allclose(np.array(panel.fig.data[0].z), per['happy']['count']['image'].numpy())
    fresh = P.example_gate_stats(seed=9, tokens={'image': 10, 'video': 20})
    panel.update(fresh, cls='happy')
    np.testing.assert_allclose(np.array(panel.fig.data[1].z), fresh['count']['video'].numpy())
    assert 'image 10' in panel.info.value and panel.updates == 1


def _tiny_moae():
    from unilearn.moae import unilearn_vit
    torch.manual_seed(0)
    return unilearn_vit(dict(embed_dim=24, depth=2, num_heads=2), num_classes=dict(image=3, video=3), img_size=16,
                        all_frames=4, patch_size=8, num_experts=4)


def test_gate_panel_from_model_refresh_and_per_class():
    from unilearn.moae import gate_stats, track_gates, reset_gate_stats
    model = _tiny_moae().eval()
    imgs, img_y = torch.randn(9, 3, 16, 16), torch.tensor([0, 1, 2] * 3)
    vids, vid_y = torch.randn(4, 3, 4, 16, 16), torch.tensor([0, 0, 1, 2])
    names = ['Happy', 'Sad', 'Anger']
    panel = P.GatePanel(model,
                        class_data={'image': (imgs, img_y, names), 'video': (vids, vid_y, ['Happy', 'Sad', 'Angry'])})
    track_gates(model); reset_gate_stats(model)
    with torch.no_grad(): model(vids, 'video')
    panel.refresh.click()
    np.testing.assert_allclose(np.array(panel.fig.data[1].z), P.gate_values(gate_stats(model), 'video'))
    assert panel.stats['all']['tokens']['video'] == 4 * 2 * 2 * 2   # 4 clips x (2 tubelets x 2 x 2 patches)
    panel.per_class.click()
    assert set(panel.cls.options) == {'all', 'happy', 'sad', 'angry'}
    panel.cls.value = 'angry'   # 'Anger' images and 'Angry' clips together
    assert panel.stats['angry']['tokens'] == {'image': 3 * 4, 'video': 1 * 8}
    assert panel.stats['happy']['tokens'] == {'image': 3 * 4, 'video': 2 * 8}


def test_gate_callback_follows_a_fastai_fit():
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from torch.utils.data import DataLoader, TensorDataset
    from unilearn.moae import gate_stats
    from unilearn.train import MixedModalityLoader, ModalityLossLogger
    model = _tiny_moae()
    data = lambda: {'image': DataLoader(TensorDataset(torch.randn(12, 3, 16, 16), torch.arange(12) % 3), batch_size=4),
                    'video': DataLoader(TensorDataset(torch.randn(6, 3, 4, 16, 16), torch.arange(6) % 3), batch_size=3)}
    dls = DataLoaders(MixedModalityLoader(data(), seed=1), MixedModalityLoader(data(), shuffle=False))
    panel = P.GatePanel()
    assert 'no gate statistics' in panel.info.value
    cb = P.GateCallback(panel, every=2)
    learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss(), cbs=[cb, ModalityLossLogger()])
    with learn.no_logging(): learn.fit(2, 1e-3)
    steps = len(dls.train)   # 3 image + 2 video batches
    assert len(cb.history) == 2 * (steps // 2 + 1) == panel.updates
    assert [it for it, _ in cb.history] == [2, 4, 5, 7, 9, 10]
    assert cb.history[-1][1]['tokens'] == {'image': 12 * 4, 'video': 6 * 8}   # one epoch of training batches
    np.testing.assert_allclose(np.array(panel.fig.data[0].z), P.gate_values(gate_stats(model), 'image'))
    with torch.no_grad(): model(torch.randn(2, 3, 16, 16), 'image')   # tracking is off after the fit
    assert gate_stats(model)['tokens']['image'] == 12 * 4
    curves = P.loss_figure(learn)
    assert {'train (smoothed)', 'valid_loss', 'image_loss', 'video_loss'} <= {d.name for d in curves.data}
    np.testing.assert_allclose(next(d for d in curves.data if d.name == 'video_loss').y,
                               learn.modality_losses['video'], rtol=1e-6)


# ---------------------------------------------------------------- recall
@pytest.fixture
def preds():
    return P.example_predictions(seed=1)


def test_recall_panel_folds_heads_and_normalisation(preds):
    panel = P.RecallPanel(preds)
    assert panel.task.value == 'video' and set(panel.task.options) == {'image', 'video'}
    for fold in (None, 3):
        panel.fold.value = fold
        d = preds[(preds.task == 'video') & ((preds.fold == fold) if fold else True)]
        np.testing.assert_allclose(panel.bars.data[0].y, recall_score(d.label, d.pred, labels=range(7), average=None))
        cm = confusion_matrix(d.label, d.pred, labels=range(7))
        np.testing.assert_allclose(np.array(panel.cm.data[0].z, dtype=float), cm / cm.sum(1, keepdims=True))
    panel.normalize.value = False
    np.testing.assert_array_equal(np.array(panel.cm.data[0].z), cm)
    panel.fold.value = 'each'
    assert [d.name.split(' (')[0] for d in panel.bars.data] == ['fold 1', 'fold 2', 'fold 3', 'fold 4', 'fold 5',
                                                                'pooled']
    panel.task.value = 'image'
    assert [v for _, v in panel.fold.options] == [None, 0] and list(panel.cm.data[0].x) == P.AFFECTNET7_CLASSES


def test_recall_panel_click_lists_clips_and_shows_one(preds):
    frames = {}
    def loader(id, task):
        frames[id] = P.example_clip(4, 8, seed=len(id))
        return frames[id]
    panel = P.RecallPanel(preds, loader=loader)
    panel.fold.value = 4
    click(panel.cm, 'Angry', 'Neutral', [2, 3])   # true Neutral, predicted Angry
    want = preds.query("task == 'video' and fold == 4 and label == 2 and pred == 3").sort_values('prob_Angry',
                                                                                                 ascending=False)
    assert len(want) > 0, 'example data should have this confusion'
    assert [v for _, v in panel.clips.options] == list(want.id)
    assert f'<b>{len(want)}</b>' in panel.cell.value
    panel.clips.value = want.id.iloc[-1]
    shown = np.asarray(Image.open(io.BytesIO(panel.clip_image.value)))
    assert np.array_equal(shown, P.to_uint8(P.filmstrip(frames[want.id.iloc[-1]])))
    assert 'true Neutral' in panel.clip_info.value
    panel.fold.value = 1                                      # a new view clears the list
    assert panel.clips.options == () and panel.clip_image.value == b''


def test_recall_panel_reads_saved_predictions(tmp_path, preds):
    from unilearn.metrics import predictions_frame, concat_predictions, save_predictions
    names = preds.attrs['classes']['video']
    d = preds[preds.task == 'video']
    frames = [predictions_frame(g.id, g.label, g[[f'prob_{c}' for c in names]].to_numpy(), names, 'video', f) for f,
              g in d.groupby('fold')]
    path = save_predictions(tmp_path / 'p.csv', concat_predictions(frames))
    panel = P.RecallPanel(path)
    assert [v for _, v in panel.fold.options] == [None, 1, 2, 3, 4, 5, 'each']
    np.testing.assert_allclose(panel.bars.data[0].y, recall_score(d.label, d.pred, labels=range(7), average=None))


def test_predictions_with_class_names_and_errors(preds):
    names = preds.attrs['classes']['video']
    named = preds.assign(label=preds.label.astype(object), pred=preds.pred.astype(object))
    video = named.task == 'video'
    named.loc[video, 'label'] = [names[i] for i in preds.label[video]]
    named.loc[video, 'pred'] = [names[i] for i in preds.pred[video]]
    np.testing.assert_array_equal(P.confusion_counts(named, 'video')[0], P.confusion_counts(preds, 'video')[0])
    bad_id = named.id[video].iloc[5]
    named.loc[named.id == bad_id, 'pred'] = 'Bored'
    with pytest.raises(ValueError, match=f"pred 'Bored' of id '{bad_id}'"): P.confusion_counts(named, 'video')
    with pytest.raises(KeyError, match='fold'): P.as_predictions(preds.drop(columns='fold'))
    with pytest.raises(KeyError, match="'audio'"): P.recall_figure(preds, 'audio')


# ---------------------------------------------------------------- relations
@pytest.fixture
def feats():
    return P.example_features(per_class=10, dim=16, seed=2)


def test_relations_panel_matches_sklearn(feats):
    panel = P.RelationsPanel(feats)
    for fold in (None, 2):
        panel.fold.value = fold
        v = (feats['task'] == 'video') & ((feats['fold'] == fold) if fold else True)
        i = feats['task'] == 'image'
        vc = np.stack([feats['features'][v & (feats['labels'] == k)].mean(0) for k in range(7)])
        ic = np.stack([feats['features'][i & (feats['labels'] == k)].mean(0) for k in range(7)])
        order = [1, 2, 0, 6, 3, 5,
                 4]   # AffectNet columns in DFEW's order: Happy Sad Neutral Anger Surprise Disgust Fear
        np.testing.assert_allclose(np.array(panel.sim.data[0].z), cosine_similarity(vc, ic[order]), atol=1e-6)
        assert list(panel.sim.data[0].x) == [P.AFFECTNET7_CLASSES[k] for k in order]
        sel = v | i
        emb = PCA(2, random_state=0).fit_transform(feats['features'][sel])
        shown = np.concatenate([np.stack([d.x, d.y], 1) for d in panel.map.data])
        assert shown.shape == emb.shape
        np.testing.assert_allclose(np.sort(shown[:, 0]), np.sort(emb[:, 0]), atol=1e-4)
    panel.color.value = 'task'
    assert [d.name for d in panel.map.data] == ['image', 'video']


def test_features_file_round_trip_and_errors(tmp_path, feats):
    from unilearn.metrics import save_features
    path = save_features(tmp_path / 'f.npz', feats['ids'], feats['labels'], feats['features'],
                         task=list(feats['task']), fold=list(feats['fold']))
    classes = {'video': P.DFEW_CLASSES, 'image': P.AFFECTNET7_CLASSES}
    np.testing.assert_allclose(P.centre_similarity(path, classes).values, P.centre_similarity(feats).values, atol=1e-6)
    with pytest.raises(FileNotFoundError, match='nope.npz'): P.as_features(tmp_path / 'nope.npz')
    with pytest.raises(ValueError, match="'fold'"): P.as_features(dict(feats, fold=feats['fold'][:3]))


def test_umap_embedding_separates_tasks(feats):
    "UMAP itself (umap-learn; the first call compiles with numba, so this takes tens of seconds)."
    f = dict(feats, features=feats['features'] + np.where(feats['task'] == 'image', 8., 0.)[:, None].astype(np.float32))
    fig = P.umap_figure(f, color='task', method='umap')
    (img, vid) = fig.data
    gap = np.linalg.norm(np.mean(np.stack([img.x, img.y], 1), 0) - np.mean(np.stack([vid.x, vid.y], 1), 0))
    spread = max(np.std(img.x), np.std(vid.x))
    assert gap > 2 * spread, (gap, spread)


# ---------------------------------------------------------------- curves and report
def test_loss_figure_from_dict_and_learner():
    fig = P.loss_figure({'image': [1.0, 0.5, torch.tensor(0.25)], 'video': [2, 1]})
    assert [d.name for d in fig.data] == ['image', 'video'] and list(fig.data[0].y) == [1.0, 0.5, 0.25]
    with pytest.raises(TypeError, match='int'): P.loss_figure(3)


def test_report_html_embeds_plotly_once_and_names_bad_items(tmp_path, preds):
    figs = {'recall': P.recall_figure(preds), 'confusion': P.confusion_figure(preds, 'image'),
            'note': '<p id="n">hi</p>',
            'widget': P.RecallPanel(preds).bars}
    path = P.report_html(figs, tmp_path / 'sub' / 'report.html', title='demo')
    text = path.read_text()
    assert text.count('* plotly.js v') == 1 and text.count('class="plotly-graph-div"') == 3
    assert '<p id="n">hi</p>' in text
    with pytest.raises(TypeError, match="'bad'"): P.report_html({'bad': 42}, tmp_path / 'x.html')


# ---------------------------------------------------------------- the notebook in a real browser
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _wait_for_server(url, proc, timeout=90):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None: raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2): return
        except OSError: time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer at {url} within {timeout}s")


def test_notebook_in_jupyterlab_headless_chromium(tmp_path):
    chromium = os.environ.get('CHROMIUM') or shutil.which('chromium')
    if not chromium:
        pytest.skip("Chromium not found: run tests/browser/setup.sh (apt-get install -y chromium) to run the browser "
                    "test")
    node = shutil.which('node')
    if not node or not (BROWSER / 'node_modules' / 'playwright-core').exists():
        pytest.skip("playwright-core not installed: run tests/browser/setup.sh (npm install in tests/browser) to run "
                    "the browser test")
    # A copy of the notebook without its `slow` cells (as the notebook test runs it), so the checkout stays clean.
    nb = json.loads((NBS / '07_panels.ipynb').read_text())
    slow = lambda c: c['cell_type'] == 'code' and ''.join(c['source']).lstrip().startswith('#| slow')
    nb['cells'] = [c for c in nb['cells'] if not slow(c)]
    work = tmp_path / 'nbs'; work.mkdir()
    (work / '07_panels.ipynb').write_text(json.dumps(nb))
    # Lab settings: no news or update checks (the network is closed), all cells in the DOM.
    settings = tmp_path / 'settings' / '@jupyterlab'
    (settings / 'apputils-extension').mkdir(parents=True)
    no_news = json.dumps({'fetchNews': 'false', 'checkForUpdates': False})
    (settings / 'apputils-extension' / 'notification.jupyterlab-settings').write_text(no_news)
    (settings / 'notebook-extension').mkdir()
    (settings / 'notebook-extension' / 'tracker.jupyterlab-settings').write_text(json.dumps({'windowingMode': 'none'}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / 'config'), JUPYTER_RUNTIME_DIR=str(tmp_path / 'runtime'),
               OMP_NUM_THREADS='1', CHROMIUM=chromium)
    env.pop('IN_TEST', None)
    server = subprocess.Popen([str(BIN / 'jupyter'), 'lab', '--no-browser', '--allow-root', f'--port={port}',
                               '--ServerApp.ip=127.0.0.1',
                               f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}',
                               '--LabApp.expose_app_in_browser=True',
                               f'--LabApp.workspaces_dir={tmp_path / "ws"}',
                               f'--LabApp.user_settings_dir={tmp_path / "settings"}'],
                              env=env, stdout=open(tmp_path / 'server.log', 'w'), stderr=subprocess.STDOUT)
    shots = BROWSER / 'screenshots'
    shutil.rmtree(shots, ignore_errors=True)
    try:
        base = f'http://127.0.0.1:{port}'
        _wait_for_server(f'{base}/api/status?token={token}', server)
        run = subprocess.run([node, str(BROWSER / 'lab.mjs'), base, token, '07_panels.ipynb', str(shots)], cwd=BROWSER,
                             env=env,
                             capture_output=True, text=True, timeout=540)
    finally:
        server.terminate()
        try: server.wait(30)
        except subprocess.TimeoutExpired: server.kill(); server.wait()
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))
    assert 'failure' not in res, res
    assert res['run_ok'] and res['executed_cells'] == res['code_cells'] > 0 and not res['errors_in_outputs'], res
    assert res['changed'] and res['changed_images'] == 3, res     # original, masked, reconstruction all moved on
    assert int(res['frame_after']) == int(res['frame_before']) + 2, res     # two presses of the right arrow key
    assert len(res['plot_traces']) >= 10 and min(res['plot_traces']) > 0, res   # every plot drawn with its data
    cell = res['clicked_cell']                                                   # a real click on a confusion cell ...
    assert cell['clips'] and 'predicted' in cell['text'] and cell['image'], res  # ... lists its clips and shows one
    assert not res['console_errors'] and not res['page_errors'], res
    assert (shots / 'reconstruction_after.png').stat().st_size > 0 and (shots / 'jupyterlab.png').stat().st_size > 0
