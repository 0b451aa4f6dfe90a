"""Joint fine-tuning under DDP (`torchrun --nproc_per_node 2`, gloo on CPU, fastai's `learn.distrib_ctx()` with
Accelerate) equals one process with the same global batch: same best epoch, same validation metrics and predictions,
same weights, and one set of checkpoints written by rank 0."""
import os, subprocess, sys
from pathlib import Path

import pytest
import torch

from conftest import Toy

TINY, GEOM = dict(embed_dim=32, depth=2, num_heads=2), dict(img_size=16, all_frames=2, patch_size=8)
VIDEO_BS, IMAGE_BS, EPOCHS = 8, 8, 4  # global batches: per rank these divided by the number of processes
BASE_LR = 1e-3  # per 8 clips of global batch (the published 1e-5 barely moves a model in 4 epochs)




def finetune(out:Path):
    "One process of the run: `python tests/test_distributed.py OUT`, alone or under torchrun."
    from unilearn.train import init_distributed, ddp_kwargs, seed_everything, quiet
    from unilearn.joint import create_model, joint_dataloaders, finetune_learner, fit_joint
    rank, world = init_distributed()
    torch.set_num_threads(1)
    seed_everything(0)  # the same initial weights on every rank
    model = create_model(TINY, num_classes={'image': 3, 'video': 3}, kind='vit_mtl', verbose=False, **GEOM)
    clips, images = (3, GEOM['all_frames'], 16, 16), (3, 16, 16)
    # plain loaders with the per-rank batch: `distrib_ctx` splits them by rank; 34 validation clips leave uneven shares
    dls = joint_dataloaders(Toy(64, images, seed=1), Toy(64, clips, seed=2), Toy(20, images, seed=3),
                            Toy(34, clips, seed=4), image_bs=IMAGE_BS // world, video_bs=VIDEO_BS // world, seed=0)
    learn = finetune_learner(model, dls, base_lr=BASE_LR, mixup_alpha=0., cutmix_alpha=0., precision='fp32',
                             checkpoint_dir=out / 'ckpt')
    quiet(learn)
    with learn.distrib_ctx(**ddp_kwargs()): hist = fit_joint(learn, epochs=EPOCHS, warmup_epochs=1)
    preds, targs = learn.get_task_preds('video')
    res = dict(history=hist.to_dict('list'), best=learn.best['epoch'], validate=[float(v) for v in learn.validate()],
               lr=learn.lr, min_lr=learn.min_lr, warmup_lr=learn.warmup_lr, preds=preds, targs=targs,
               weights=model.state_dict(), world=world)
    torch.save(res, out / f'rank{rank}.pt')
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        os._exit(0)  # gloo can abort at interpreter exit (see tests/test_train.py); everything is on disk by now


def _run(cmd, cwd):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def test_torchrun_two_processes_equal_one_process(tmp_path):
    one, two = tmp_path / 'one', tmp_path / 'two'
    one.mkdir(); two.mkdir()
    finetune(one)  # one process, here
    _run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', __file__, two],
         tmp_path)
    a = torch.load(one / 'rank0.pt', weights_only=False)
    r0, r1 = (torch.load(two / f'rank{r}.pt', weights_only=False) for r in (0, 1))
    assert (a['world'], r0['world']) == (1, 2)
    for r in (r0, r1):  # every rank reports the whole validation set, as one process does
        assert r['best'] == a['best'], "the same best epoch"
        assert r['history'].keys() == a['history'].keys()
        for k, v in a['history'].items():
            if k.endswith(('_uar', '_war', 'valid_loss')): assert r['history'][k] == pytest.approx(v, abs=1e-6), k
        assert r['validate'] == pytest.approx(a['validate'], abs=1e-6)
        assert (r['lr'], r['min_lr'], r['warmup_lr']) == pytest.approx((a['lr'], a['min_lr'], a['warmup_lr']))
        assert torch.equal(r['targs'], a['targs']), "predictions gathered over ranks in the single-process order"
        torch.testing.assert_close(r['preds'], a['preds'], atol=1e-5, rtol=0)
        for k, w in a['weights'].items(): torch.testing.assert_close(r['weights'][k], w, atol=1e-5, rtol=0, msg=k)
    assert a['lr'] == pytest.approx(BASE_LR * VIDEO_BS / 8) and a['min_lr'] == pytest.approx(1e-6 * VIDEO_BS / 256)
    names = lambda d: sorted(p.name for p in (d / 'ckpt').iterdir() if p.name.startswith('epoch_'))
    assert names(two) == names(one) == [f'epoch_{e:04d}.pth' for e in range(1, EPOCHS + 1)], "one set of checkpoints"
    assert not [p for p in (two / 'ckpt').iterdir() if p.suffix == '.tmp']


if __name__ == '__main__': finetune(Path(sys.argv[1]))
