"""Fault cases of training (`unilearn.train`, `unilearn.joint`, `unilearn.mae`): bad settings, broken checkpoints, shared
output folders, non-finite values. Each case is `(name, input, outcome)`: `input(tmp_path)` runs it, the outcome is
`('error', fragment of the one-line message)` or `'handled'` (then `input` asserts what handling means)."""
import os, subprocess, sys, warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from fastai.callback.core import Callback

from unilearn.train import (RunLock, save_checkpoint, warmup_cosine, check_manifest, precision_callback, prepare_model,
                            NonFiniteGuard, latest_checkpoint, seed_everything, quiet)
from unilearn.joint import create_model, joint_dataloaders, finetune_learner, fit_joint, best_model

torch.set_num_threads(1)  # tiny models: threads only contend
TINY, GEOM = dict(embed_dim=16, depth=2, num_heads=2), dict(img_size=16, all_frames=2, patch_size=8)


class Toy(Dataset):
    "Random tensors whose label is written in their mean."
    def __init__(self, n, shape, classes=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels, self.classes = [i % classes for i in range(n)], [f'c{i}' for i in range(classes)]
        self.ids = [f'{seed}-{i}' for i in range(n)]
        self.x = [torch.randn(*shape, generator=g) * 0.1 + l for l in self.labels]
    def __len__(self): return len(self.labels)
    def __getitem__(self, i): return self.x[i], self.labels[i]


def tiny(tmp=None, seed=0, epochs=None, depth=2, **kw):
    "A tiny joint fine-tuning learner (fp32, quiet); fitted for `epochs` when given."
    seed_everything(0)
    images, clips = Toy(24, (3, 16, 16)), Toy(24, (3, 2, 16, 16), seed=1)
    model = create_model({**TINY, 'depth': depth}, num_classes={'image': 3, 'video': 3}, num_experts=2, **GEOM, verbose=False)
    dls = joint_dataloaders(images, clips, images, clips, image_bs=4, video_bs=4, seed=seed)
    kw = {'precision': 'fp32', 'lr': 3e-3, **kw}
    if tmp is not None: kw.setdefault('checkpoint_dir', Path(tmp) / 'run')
    learn = finetune_learner(model, dls, **kw)
    quiet(learn)
    if epochs: fit_joint(learn, epochs=epochs, warmup_epochs=1)
    return learn


class Stop(Callback):
    "Raise KeyboardInterrupt after epoch `at` was checkpointed (a killed job)."
    order = 95
    def __init__(self, at): self.at = at
    def after_epoch(self):
        if self.epoch == self.at: raise KeyboardInterrupt


class InjectNaN(Callback):
    "Turn the input of training batch `it` of epoch `epoch` (every batch from then on if `every`) into NaN."
    order = -20
    def __init__(self, epoch=1, it=2, every=False): self.e, self.i, self.every = epoch, it, every
    def before_batch(self):
        if self.training and self.epoch == self.e and (self.iter == self.i or (self.every and self.iter >= self.i)):
            self.learn.xb = (torch.full_like(self.xb[0], float('nan')), *self.xb[1:])


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def finetune_resume(tmp):
    "SIGINT-like stop after epoch 2 of 4, a new learner resumes: weights, best epoch and history equal the straight run."
    straight = tiny(tmp / 'a', epochs=4)
    first = tiny(tmp / 'b', cbs=[Stop(1)])
    try: fit_joint(first, epochs=4, warmup_epochs=1)
    except KeyboardInterrupt: pass
    torch.rand(3)
    resumed = tiny(tmp / 'b', resume='last', epochs=4)
    same_weights(straight.model, resumed.model)
    assert straight.recorder.values == resumed.recorder.values and len(resumed.recorder.values) == 4
    assert straight.best['epoch'] == resumed.best['epoch'] and straight.best['value'] == resumed.best['value']
    same_weights(best_model(straight), best_model(resumed))


def nan_batch_mid_epoch(tmp):
    "One NaN input batch in epoch 1 is skipped before the weights change, counted, and nothing non-finite is saved."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn = tiny(tmp, cbs=[InjectNaN(1, 2)], epochs=3)
    assert learn.bad_steps == [dict(epoch=1, batch=2, modality=learn.bad_steps[0]['modality'], what='loss')]
    assert any('non-finite loss at epoch 1, batch 2' in str(x.message) for x in w)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert all(np.isfinite(v[0]) for v in learn.recorder.values), 'train_loss stays finite'
    ck = torch.load(latest_checkpoint(tmp / 'run'), weights_only=True)
    assert all(torch.isfinite(t).all() for t in ck['model'].values() if t.is_floating_point())


def nan_gradient(tmp):
    "A finite loss with a non-finite gradient: the step is skipped, the weights are exactly those before it."
    learn = tiny(precision='fp32')
    class BadGrad(Callback):
        order = NonFiniteGuard.order - 1
        def before_step(self):
            if self.iter == 1: self.model.head['video'].weight.grad.fill_(float('inf'))
            if self.iter == 1: self.before = {k: v.clone() for k, v in self.model.state_dict().items()}
        def after_step(self):
            if self.iter == 1: same_weights_sd(self.before, self.model.state_dict())
    def same_weights_sd(a, b): assert all(torch.equal(a[k], b[k]) for k in a)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn.fit(1, cbs=[BadGrad()])
    assert [b['what'] for b in learn.bad_steps] == ['gradient']


def nan_every_batch(tmp):
    learn = tiny(cbs=[InjectNaN(0, 1, every=True)], max_bad_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        fit_joint(learn, epochs=2, warmup_epochs=1)


def refuse_nan_save(tmp):
    save_checkpoint(dict(model={'w': torch.tensor([1., float('nan')])}), tmp / 'epoch_0001.pth')


def full_disk(tmp):
    (tmp / 'epoch_0001.pth').write_bytes(b'old')
    def writer(obj, fh):
        fh.write(b'half a checkpoint')
        raise OSError(28, 'No space left on device')
    try: save_checkpoint(dict(model={'w': torch.ones(2)}), tmp / 'epoch_0001.pth', writer=writer)
    finally:
        assert sorted(p.name for p in tmp.iterdir()) == ['epoch_0001.pth'], 'no temporary file is left'
        assert (tmp / 'epoch_0001.pth').read_bytes() == b'old', 'the previous file is untouched'


def truncated(tmp):
    tiny(tmp, epochs=2)
    f = tmp / 'run' / 'epoch_0002.pth'
    f.write_bytes(f.read_bytes()[:5000])
    fit_joint(tiny(tmp, resume='last'), epochs=3, warmup_epochs=1)


def foreign_weights(tmp):
    (tmp / 'run').mkdir()
    torch.save({'model': tiny().model.state_dict()}, tmp / 'run' / 'epoch_0001.pth')  # an MAE-style weights file
    fit_joint(tiny(tmp, resume='last'), epochs=2, warmup_epochs=1)


def foreign_pickle(tmp):
    (tmp / 'run').mkdir()
    torch.save({'model': object(), 'epoch': 1}, tmp / 'run' / 'epoch_0001.pth')
    fit_joint(tiny(tmp, resume='last'), epochs=2, warmup_epochs=1)


def other_architecture(tmp):
    tiny(tmp / 'a', epochs=1)
    fit_joint(tiny(tmp / 'b', depth=3, resume=tmp / 'a' / 'run' / 'epoch_0001.pth'), epochs=2, warmup_epochs=1)


def second_run_same_folder(tmp):
    tiny(tmp, epochs=1)
    tiny(tmp, seed=1)


def resume_other_seed(tmp):
    tiny(tmp, epochs=1)
    tiny(tmp, seed=1, resume='last')


def resume_other_lr_checkpoint(tmp):
    tiny(tmp / 'a', epochs=1)
    fit_joint(tiny(tmp / 'b', lr=1e-2, resume=tmp / 'a' / 'run'), epochs=2, warmup_epochs=1)


def resume_more_epochs(tmp):
    "Only the number of epochs may differ on resume: a 2-epoch run continued to 3 epochs."
    tiny(tmp, epochs=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn = tiny(tmp, resume='last', epochs=3)
    assert len(learn.recorder.values) == 3 and any('fit of 2 epochs' in str(x.message) for x in w)


def locked_by_live_process(tmp):
    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (tmp / 'run').mkdir()
        (tmp / 'run' / 'run.lock').write_text(f'{{"pid": {p.pid}, "host": "{os.uname().nodename}", "started": "now"}}')
        tiny(tmp)
    finally: p.kill(); p.wait()


def stale_lock(tmp):
    p = subprocess.Popen([sys.executable, '-c', 'pass']); p.wait()  # a finished process: its pid is free
    (tmp / 'run').mkdir()
    (tmp / 'run' / 'run.lock').write_text(f'{{"pid": {p.pid}, "host": "{os.uname().nodename}", "started": "then"}}')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn = tiny(tmp, epochs=1)
    assert any(f'taking over the lock of PID {p.pid}' in str(x.message) for x in w)
    assert not (tmp / 'run' / 'run.lock').exists(), 'released at the end of the fit'


def lock_other_host(tmp):
    (tmp / 'run').mkdir()
    (tmp / 'run' / 'run.lock').write_text('{"pid": 1, "host": "elsewhere", "started": "then"}')
    RunLock(tmp / 'run').acquire()


def corrupt_manifest(tmp):
    tiny(tmp, epochs=1)
    (tmp / 'run' / 'manifest.json').write_text('{"seed": 0,')
    tiny(tmp, resume='last')


def manifest_differs(tmp):
    check_manifest(dict(seed=0, config=dict(lr=1e-3), epochs=5), dict(seed=0, config=dict(lr=2e-3), epochs=9), 'run x')


def resume_missing_file(tmp): tiny(tmp, resume=tmp / 'nope.pth').fit(1)


def resume_last_empty(tmp):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn = tiny(tmp, resume='last', epochs=1)
    assert any('no checkpoint' in str(x.message) for x in w) and len(learn.recorder.values) == 1


def lr_find_and_validate(tmp):
    "fastai's own calls on the fine-tuning learner: lr_find and validate run and leave the best epoch alone."
    learn = tiny(tmp, epochs=2)
    best = learn.best['epoch']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = learn.lr_find(num_it=5, show_plot=False)
    assert res.valley > 0
    out = learn.validate()
    assert len(out) == 1 + 4 and learn.best['epoch'] == best  # valid loss + UAR/WAR of both tasks


def keepbest_composes(tmp):
    "KeepBest next to fastai's SaveModelCallback, EarlyStoppingCallback and CSVLogger."
    from fastai.callback.tracker import SaveModelCallback, EarlyStoppingCallback
    from fastai.callback.progress import CSVLogger
    learn = tiny(path=tmp, cbs=[SaveModelCallback('video_uar', fname='best'), EarlyStoppingCallback('valid_loss', patience=1),
                                CSVLogger(tmp / 'log.csv')])
    fit_joint(learn, epochs=3, warmup_epochs=1)
    assert (tmp / 'models' / 'best.pth').exists() and (tmp / 'log.csv').read_text().count('\n') == len(learn.recorder.values) + 1
    assert learn.best['epoch'] is not None


def no_compile(tmp):
    import unittest.mock as um
    with um.patch('torch.compile', side_effect=RuntimeError('no C compiler found')): tiny(compile=True)


def fp16_on_cpu(tmp): precision_callback('fp16', 'cpu')


def deprecated_names(tmp):
    "The old spellings `autocast=`, `checkpoint_every=`, `resume_from=` still work, with a DeprecationWarning each."
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        learn = tiny(tmp, autocast=None, checkpoint_every=2, resume_from=None)
    assert sum(issubclass(x.category, DeprecationWarning) for x in w) == 3
    ck = learn.cbs.filter(lambda c: type(c).__name__ == 'CheckpointCallback')[0]
    assert ck.every == 2 and not learn.cbs.filter(lambda c: type(c).__name__ == 'AutocastCallback')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        pre = tiny_mae_learner(tmp, precision=None, **{'dtype': 'bf16', 'checkpoint_every': 5})
    assert sum(issubclass(x.category, DeprecationWarning) for x in w) == 2
    assert pre.cbs.filter(lambda c: type(c).__name__ == 'CheckpointCallback')[0].every == 5
    assert pre.cbs.filter(lambda c: type(c).__name__ == 'AutocastCallback')[0].dtype == torch.bfloat16


def tiny_mae_learner(tmp, seed=0, **kw):
    from torch.utils.data import DataLoader, TensorDataset
    from unilearn.mae import create_mae, pretrain_learner
    seed_everything(0)
    mae = create_mae(dict(embed_dim=16, depth=1, num_heads=2), img_size=16, all_frames=2, patch_size=8, decoder_dim=16,
                     decoder_depth=1, image_mask_ratio=0.5, video_mask_ratio=0.5)
    clips = DataLoader(TensorDataset(torch.randn(8, 3, 2, 16, 16)), batch_size=4, shuffle=True)
    kw = {'precision': 'fp32', 'save_every': 1, **kw}
    if kw['precision'] is None: del kw['precision']
    if 'checkpoint_every' in kw: del kw['save_every']
    return pretrain_learner(mae, video_dl=clips, lr=1e-3, checkpoint_dir=tmp / 'pre', seed=seed, quiet=True, **kw)


def pretrain_nan_and_resume_check(tmp):
    "MAE pre-training: a NaN batch is skipped; a resume with another seed is refused."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = tiny_mae_learner(tmp, cbs=[InjectNaN(0, 1)])
        learn.fit(2)
    assert len(learn.bad_steps) == 1 and all(torch.isfinite(p).all() for p in learn.model.parameters())
    tiny_mae_learner(tmp, seed=1, resume='last')


CASES = [
    ('finetune resume equals an uninterrupted run', finetune_resume, 'handled'),
    ('NaN input batch mid-epoch', nan_batch_mid_epoch, 'handled'),
    ('non-finite gradient, finite loss', nan_gradient, 'handled'),
    ('NaN in every batch', nan_every_batch, ('error', 'non-finite loss at epoch 0, batch 3')),
    ('save of non-finite weights', refuse_nan_save, ('error', "weight 'w' is not finite")),
    ('full disk during a checkpoint save', full_disk, ('error', 'could not write checkpoint')),
    ('truncated checkpoint on resume', truncated, ('error', 'epoch_0002.pth is truncated')),
    ('foreign weights file as checkpoint', foreign_weights, ('error', 'is not a CheckpointCallback checkpoint')),
    ('foreign pickle as checkpoint', foreign_pickle, ('error', 'not a unilearn training checkpoint')),
    ('checkpoint of another architecture', other_architecture, ('error', 'is for another architecture')),
    ('second run into a folder with checkpoints', second_run_same_folder, ('error', 'already holds checkpoints')),
    ('resume with another seed', resume_other_seed, ('error', 'seed 0 -> 1')),
    ('resume a checkpoint with another lr', resume_other_lr_checkpoint, ('error', 'config.lr')),
    ('resume with more epochs', resume_more_epochs, 'handled'),
    ('folder locked by a live run', locked_by_live_process, ('error', 'is in use by run PID')),
    ('stale lock of a dead run', stale_lock, 'handled'),
    ('lock held on another host', lock_other_host, ('error', 'on host elsewhere')),
    ('corrupt manifest.json', corrupt_manifest, ('error', 'manifest.json is not valid JSON')),
    ('manifests differing in lr and epochs', manifest_differs, ('error', 'config.lr 0.001 -> 0.002')),
    ('resume from a missing file', resume_missing_file, ('error', 'nope.pth not found')),
    ("resume='last' with nothing saved", resume_last_empty, 'handled'),
    ('warmup_cosine over 0 epochs', lambda tmp: warmup_cosine(1e-3, 0, n_epoch=0), ('error', 'n_epoch must be')),
    ('fit_joint with epochs=0', lambda tmp: fit_joint(tiny(), epochs=0), ('error', 'epochs must be a positive int')),
    ('fit of 0 epochs with checkpoints', lambda tmp: tiny(tmp).fit(0), ('error', 'a fit of 0 epochs')),
    ('fp16 on CPU', fp16_on_cpu, ('error', "precision='fp16' needs a CUDA device")),
    ('unknown precision', lambda tmp: tiny(precision='fp8'), ('error', 'precision must be one of')),
    ('compile where torch.compile fails', no_compile, ('error', 'compile=True: torch.compile cannot compile')),
    ('grad_checkpointing without support', lambda tmp: prepare_model(torch.nn.Linear(2, 2), grad_checkpointing=True),
     ('error', 'grad_checkpointing=True: Linear has no set_grad_checkpointing')),
    ('resume without checkpoint_dir', lambda tmp: tiny(resume='last'), ('error', 'needs checkpoint_dir')),
    ('save_every=0', lambda tmp: tiny(tmp, save_every=0), ('error', 'save_every must be a positive int')),
    ('max_bad_steps=-1', lambda tmp: tiny(max_bad_steps=-1), ('error', 'max_bad_steps must be an int >= 0')),
    ('monitor of a missing column', lambda tmp: tiny(monitor='audio_uar', epochs=1), ('error', "no column 'audio_uar'")),
    ('lr_find and validate on the fine-tuning learner', lr_find_and_validate, 'handled'),
    ('KeepBest with SaveModel, EarlyStopping, CSVLogger', keepbest_composes, 'handled'),
    ('deprecated argument names', deprecated_names, 'handled'),
    ('unknown keyword argument', lambda tmp: tiny(dtype='bf16'), ('error', "unexpected keyword argument 'dtype'")),
    ('pre-training: NaN batch, then resume with another seed', pretrain_nan_and_resume_check, ('error', 'seed 0 -> 1')),
]
