"""The standard fastai API on both Learners: the fine-tuning Learner of `finetune_learner` and the pre-training
Learner of `pretrain_learner`, fed by `MixedModalityLoader` inside fastai `DataLoaders`."""
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from sklearn.metrics import balanced_accuracy_score, accuracy_score
import fastai.callback.hook  # Learner.summary
from fastai.callback.schedule import *  # fit_one_cycle, lr_find
from fastai.learner import load_learner

from unilearn.joint import create_model, joint_dataloaders, finetune_learner, fit_joint
from unilearn.mae import create_mae, pretrain_learner, toy_shapes
from unilearn.train import MixedModalityLoader, seed_everything, quiet, task_names
from conftest import Toy

torch.set_num_threads(1)
TINY, GEOM = dict(embed_dim=32, depth=2, num_heads=2), dict(img_size=16, all_frames=2, patch_size=8)




@pytest.fixture(scope='module')
def joint():
    seed_everything(0)
    model = create_model(TINY, num_classes={'image': 3, 'video': 3}, num_experts=2, verbose=False, **GEOM)
    clip = (3, GEOM['all_frames'], 16, 16)
    dls = joint_dataloaders(Toy(32, (3, 16, 16), seed=1, shift=0.5), Toy(32, clip, seed=2, shift=0.5), Toy(12, (3, 16, 16), seed=3, shift=0.5),
                            Toy(14, clip, seed=4, shift=0.5), image_bs=8, video_bs=8)
    learn = finetune_learner(model, dls, base_lr=1e-3, precision='fp32')
    quiet(learn)
    fit_joint(learn, epochs=2, warmup_epochs=1)
    return learn


@pytest.fixture(scope='module')
def mae():
    seed_everything(0)
    model = create_mae(dict(embed_dim=32, depth=1, num_heads=2), img_size=16, all_frames=2, patch_size=8,
                       decoder_dim=16, decoder_depth=1, decoder_heads=2)
    dl = lambda x, shuffle=True: DataLoader(TensorDataset(x), batch_size=8, shuffle=shuffle)
    learn = pretrain_learner(model, image_dl=dl(toy_shapes(32, None, 16)), video_dl=dl(toy_shapes(16, 2, 16, seed=1)),
                             video_share=1.0, precision='fp32', valid_video_dl=dl(toy_shapes(8, 2, 16, seed=2), False),
                             quiet=True)
    learn.fit(1)
    return learn


def test_dataloaders_protocol(joint):
    dls = joint.dls
    e = dls.train.epoch
    x, task, y = dls.one_batch()
    assert dls.train.epoch == e, "one_batch must not use up an epoch"
    assert task == dls.train.schedule()[0] and len(x) == 8
    assert (dls.train.n, dls.valid.n) == (32 + 16, 14 + 12)  # train: every video batch + half the image batches
    v = dls.valid.new(task='video')
    assert (v.modalities, len(v), v.n) == (['video'], 2, 14)
    dls.cpu()
    assert dls.device == torch.device('cpu') and dls.train.device == torch.device('cpu')
    with pytest.raises(KeyError, match='no modality'): dls.valid.new(task='audio')


def test_fit_one_cycle_and_validate(joint):
    before = [p.detach().clone() for p in joint.model.parameters()]
    joint.fit_one_cycle(1, 1e-3)
    assert any(not torch.equal(a, p) for a, p in zip(before, joint.model.parameters()))
    loss, *mets = joint.validate()
    m = dict(zip([mt.name for mt in joint.metrics], mets))
    assert list(m) == ['video_uar', 'video_war', 'image_uar', 'image_war'] and loss > 0
    for task in ('video', 'image'):  # the metrics are those of the predictions, per task
        probs, targs = joint.get_task_preds(task)
        p = probs.argmax(1).numpy()
        assert m[f'{task}_uar'] == pytest.approx(100 * balanced_accuracy_score(targs, p))
        assert m[f'{task}_war'] == pytest.approx(100 * accuracy_score(targs, p))


def test_get_preds_per_task_in_dataset_order(joint):
    probs, targs = joint.get_task_preds('video')
    ds = joint.dls.valid.dataset['video']
    assert probs.shape == (14, 3) and targs.tolist() == list(ds.labels)
    torch.testing.assert_close(probs.sum(1), torch.ones(14))
    inp, probs2, targs2, dec = joint.get_task_preds('video', with_input=True, with_decoded=True)
    assert task_names(inp[1]) == ['video'] * 14 and torch.equal(inp[0][3], ds[3][0])
    assert torch.equal(dec, probs2.argmax(1))
    tp, tt = joint.get_task_preds('image', ds_idx=0)  # the training images, every one once, in order
    assert tp.shape == (32, 3) and tt.tolist() == list(joint.dls.train.dataset['image'].labels)


def test_predict(joint):
    probs, _ = joint.get_task_preds('video')
    x, y = joint.dls.valid.dataset['video'][5]
    label, idx, p = joint.predict((x, 'video'))
    torch.testing.assert_close(p, probs[5])
    assert idx == p.argmax() and label == f'c{int(idx)}'


def test_show_batch_and_show_results(joint):
    axs = joint.dls.show_batch(max_n=4)
    assert len([a for a in axs.flat if a.get_title()]) == 4
    assert all(a.get_title().split(': ')[0] in ('image', 'video') for a in axs.flat if a.get_title())
    joint.show_results(max_n=3, shuffle=False)  # fastai's returns nothing: read the figure it drew
    titles = [a.get_title() for a in plt.gcf().axes if a.get_title()]
    assert len(titles) == 3 and all(t.startswith('video: c') and ' / c' in t for t in titles)


def test_summary(joint):
    s = joint.summary()
    assert 'Total params' in s and 'Linear' in s


def test_lr_find_leaves_training_as_it_was(joint):
    state = {k: v.clone() for k, v in joint.model.state_dict().items()}
    r = joint.lr_find(num_it=5, show_plot=False)
    assert r.valley > 0
    for k, v in joint.model.state_dict().items(): assert torch.equal(v, state[k]), k


def test_export_load_learner_round_trip(joint, tmp_path):
    probs, _ = joint.get_task_preds('video')
    joint.export(tmp_path / 'joint.pkl')
    back = load_learner(tmp_path / 'joint.pkl')
    assert len(back.dls.train) == 0 and back.dls.valid.classes['video'] == ['c0', 'c1', 'c2']
    items = [(x, 'video') for x, _ in joint.dls.valid.dataset['video']]
    p2, t2 = back.get_preds(dl=back.dls.test_dl(items))
    torch.testing.assert_close(p2, probs)
    assert back.predict(items[5])[0] == joint.predict(items[5])[0]
    with pytest.raises(ValueError, match='names no task'): back.dls.test_dl([items[0][0]])


def test_mae_learner_api(mae, tmp_path):
    x, task, y = mae.dls.one_batch()
    assert torch.equal(x, y)  # unlabelled: the target is the input
    assert mae.validate()[0] > 0
    seed_everything(1); out, _ = mae.get_preds()
    assert out.pred.shape[:2] == out.mask.shape == (8, 4)  # 8 clips of 4 tubelet tokens
    mae.fit_one_cycle(1, 1e-3)
    assert 'Total params' in mae.summary()
    assert len([a for a in mae.dls.show_batch(max_n=2).flat if a.get_title()]) == 2
    clip = mae.dls.valid.dataset['video'][0][0]
    seed_everything(2); pred, mask = mae.predict((clip, 'video'))[0]
    assert pred.shape[0] == mask.shape[0] == 4
    mae.export(tmp_path / 'mae.pkl')
    back = load_learner(tmp_path / 'mae.pkl')
    items = [(c, 'video') for (c,) in mae.dls.valid.dataset['video']]
    seed_everything(3); a, _ = mae.get_preds(dl=mae.dls.test_dl(items))
    seed_everything(3); b, _ = back.get_preds(dl=back.dls.test_dl(items))
    torch.testing.assert_close(a.pred, b.pred); assert torch.equal(a.mask, b.mask)


def test_new_bad_input():
    dl = MixedModalityLoader({'video': iter([torch.zeros(2, 3)])}, steps={'video': 1})
    with pytest.raises(TypeError, match="loader 'video' is a list_iterator"): dl.new(shuffle=False)
