"""Joint fine-tuning pieces that the notebook shows only once: the published lr rule, DDP shares of the
class-balanced image stream, and the single-head ViT baseline trained on video alone."""
import numpy as np
import pytest
import torch


from unilearn.joint import (create_model, joint_dataloader, joint_dataloaders, finetune_learner, fit_joint,
                            evaluate_joint, stratified_split, best_model)
from unilearn.train import seed_everything, quiet
from conftest import Toy

TINY = dict(embed_dim=32, depth=2, num_heads=2)
GEOM = dict(img_size=16, all_frames=2, patch_size=8)




def test_lr_follows_the_published_rule():
    "lr = 1e-5 x (video batch x world size) / 8; min lr 1e-6 x total batch / 256 as in the published code; unless given."
    images, clips = Toy(40, (3, 16, 16)), Toy(40, (3, 2, 16, 16), seed=1)
    model = create_model(TINY, num_classes={'image': 3, 'video': 3}, num_experts=2, **GEOM)
    dls = joint_dataloaders(images, clips, images, clips, image_bs=4, video_bs=16)
    learn = finetune_learner(model, dls, precision='fp32')
    assert learn.lr == pytest.approx(2e-5) and learn.min_lr == pytest.approx(1e-6 * 16 / 256)
    dls2 = joint_dataloaders(images, clips, images, clips, image_bs=4, video_bs=4, world_size=2, rank=1)
    learn2 = finetune_learner(model, dls2, precision='fp32')
    assert learn2.lr == pytest.approx(1e-5)
    assert finetune_learner(model, dls, lr=3e-4, precision='fp32').lr == 3e-4


def test_ddp_ranks_split_the_balanced_image_stream():
    "Both ranks run the same schedule; their image batches are different slices of one class-balanced draw."
    images, clips = Toy(64, (1,)), Toy(32, (1,), seed=1)
    images.x = [torch.tensor([float(i)]) for i in range(64)]
    loaders = [joint_dataloader(images, clips, image_bs=4, video_bs=4, sfer_ratio=1.0, rank=r, world_size=2, seed=5) for r in (0, 1)]
    assert loaders[0].schedule(0) == loaders[1].schedule(0)
    got = [[tuple(x.flatten().tolist()) for x, t, y in ld if t == 'image'] for ld in loaders]
    assert len(got[0]) == len(got[1]) == 8                 # 16 batches per pass, half to each rank
    assert got[0] != got[1]
    single = [tuple(x.flatten().tolist()) for x, t, y in joint_dataloader(images, clips, image_bs=4, video_bs=4, sfer_ratio=1.0, seed=5)
              if t == 'image']
    assert len(single) == 16                                # one process reads all of them


def test_video_only_vit_baseline_trains_and_evaluates():
    "kind='vit' (one head) trains on video alone (no image data) and is scored through the same path."
    seed_everything(0)
    clips = Toy(48, (3, 2, 16, 16), seed=2)
    tr, va = stratified_split(clips, 0.25)
    model = create_model(TINY, num_classes={'image': 3, 'video': 3}, kind='vit', **GEOM)
    dls = joint_dataloaders(None, tr, None, va, video_bs=8)
    assert set(dls.train.modalities) == {'video'}
    learn = finetune_learner(model, dls, lr=3e-3, precision='fp32', mixup_alpha=0., cutmix_alpha=0.)
    with quiet(learn): hist = fit_joint(learn, epochs=3, warmup_epochs=1)
    assert list(hist.columns[:2]) == ['epoch', 'train_loss'] and 'video_uar' in hist and len(hist) == 3
    preds = evaluate_joint(best_model(learn), {'video': va})
    assert len(preds) == len(va) and set(preds.task) == {'video'}
    assert np.allclose(preds.filter(like='prob_').sum(axis=1), 1, atol=1e-5)


def test_image_dataset_with_too_many_classes_is_refused():
    images, clips = Toy(40, (3, 16, 16), classes=5), Toy(40, (3, 2, 16, 16), seed=1)
    model = create_model(TINY, num_classes={'image': 3, 'video': 3}, num_experts=2, **GEOM)
    dls = joint_dataloaders(images, clips, images, clips, image_bs=4, video_bs=4)
    with pytest.raises(ValueError, match='the image dataset has 5 classes'): finetune_learner(model, dls)
