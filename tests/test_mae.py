"""MAE pre-training (`unilearn.mae`): exact mask counts, the encoder never sees hidden tokens, the published
checkpoint layout round-trips, the loss falls on a fixed seed, and an interrupted run resumes exactly."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode
from torch.nn.attention import sdpa_kernel, SDPBackend

from unilearn.mae import (create_mae, reconstruct, encode_visible, load_mae_checkpoint, encoder_state_dict, pretrain_learner,
                          toy_shapes, unpatchify, RandomMasking, TubeMasking, MaskedAutoencoder)
from unilearn.train import seed_everything
from unilearn.vit import create_vit, vit_flops

torch.set_num_threads(1)
NARROW = dict(embed_dim=48, depth=1, num_heads=3)

def tiny_mae(**kw):
    return create_mae(dict(embed_dim=48, depth=2, num_heads=3), img_size=32, all_frames=4, patch_size=8, decoder_dim=32,
                      decoder_depth=1, decoder_heads=2, **{'image_mask_ratio': .75, 'video_mask_ratio': .75, **kw})

@pytest.fixture(scope='module')
def mae160():
    torch.manual_seed(0)
    return create_mae(NARROW, decoder_dim=32, decoder_depth=1, decoder_heads=2).eval()

def test_mask_counts_exact_at_160(mae160):
    clip, img = torch.zeros(3, 3, 16, 160, 160), torch.zeros(3, 3, 160, 160)
    with torch.no_grad():
        assert mae160(clip, 'video').mask.sum(1).tolist() == [760] * 3
        assert mae160(img, 'image').mask.sum(1).tolist() == [90] * 3
    assert mae160(clip).mask.shape == (3, 800) and mae160(img).mask.shape == (3, 100)
    assert TubeMasking(0.95)(2, (8, 10, 10)).sum(1).tolist() == [760, 760]

def test_fixed_seed_fixed_mask(mae160):
    x = torch.zeros(2, 3, 16, 160, 160)
    g = lambda s: torch.Generator().manual_seed(s)
    assert torch.equal(mae160.make_mask(x, generator=g(3)), mae160.make_mask(x, generator=g(3)))
    assert not torch.equal(mae160.make_mask(x, generator=g(3)), mae160.make_mask(x, generator=g(4)))
    assert torch.equal(RandomMasking(0.9)(4, (1, 10, 10), g(0)), RandomMasking(0.9)(4, (1, 10, 10), g(0)))

def test_encoder_never_sees_hidden_tokens(mae160):
    x = torch.randn(2, 3, 16, 160, 160)
    mask = mae160.make_mask(x, generator=torch.Generator().manual_seed(0))
    seen = []
    h = mae160.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    hidden = unpatchify(mask[:, :, None, None].expand(-1, -1, 512, 3).float(), (8, 10, 10)).bool()
    with torch.no_grad():
        out = mae160(x, mask=mask)
        out2 = mae160(torch.where(hidden, torch.randn_like(x) * 1e3, x), mask=mask)  # garbage in every hidden patch
    h.remove()
    assert seen == [(2, 40, 48)] * 2
    assert torch.equal(out.pred, out2.pred)  # nothing downstream depends on hidden pixels

def test_encoder_flops_are_visible_tokens_only(mae160):
    x = torch.randn(1, 3, 16, 160, 160)
    mask = mae160.make_mask(x)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        mae160.encoder.forward_visible(x, mask)
    assert fc.get_total_flops() == vit_flops(mae160.encoder, 40)
    assert vit_flops(mae160.encoder, 800) > 19 * fc.get_total_flops()

def published_state_dict(enc_depth, dec_depth, D, Dd, out, k=3 * 2 * 16 * 16, hidden=4):
    "A random state dict in the published pre-training layout, written from its key names, not from our model."
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    def block(prefix, d):
        return {f'{prefix}.norm1.weight': r(d), f'{prefix}.norm1.bias': r(d), f'{prefix}.attn.q_bias': r(d), f'{prefix}.attn.v_bias': r(d),
                f'{prefix}.attn.qkv.weight': r(3 * d, d), f'{prefix}.attn.proj.weight': r(d, d), f'{prefix}.attn.proj.bias': r(d),
                f'{prefix}.norm2.weight': r(d), f'{prefix}.norm2.bias': r(d), f'{prefix}.mlp.fc1.weight': r(hidden * d, d),
                f'{prefix}.mlp.fc1.bias': r(hidden * d), f'{prefix}.mlp.fc2.weight': r(d, hidden * d), f'{prefix}.mlp.fc2.bias': r(d)}
    sd = {'encoder.patch_embed.proj.weight': r(D, 3, 2, 16, 16), 'encoder.patch_embed.proj.bias': r(D),
          'encoder.norm.weight': r(D), 'encoder.norm.bias': r(D), 'decoder.norm.weight': r(Dd), 'decoder.norm.bias': r(Dd),
          'decoder.head.weight': r(out, Dd), 'decoder.head.bias': r(out), 'encoder_to_decoder.weight': r(Dd, D), 'mask_token': r(1, 1, Dd)}
    for i in range(enc_depth): sd.update(block(f'encoder.blocks.{i}', D))
    for i in range(dec_depth): sd.update(block(f'decoder.blocks.{i}', Dd))
    return sd

def test_published_layout_round_trips(mae160, tmp_path):
    sd = published_state_dict(1, 1, 48, 32, 1536)
    torch.save({'model': sd, 'epoch': 99}, tmp_path / 'checkpoint-99.pth')
    model = create_mae(NARROW, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    load_mae_checkpoint(model, tmp_path / 'checkpoint-99.pth')
    mine = model.state_dict()
    assert set(mine) == set(sd) and all(torch.equal(mine[k], sd[k]) for k in sd)
    torch.save({'model': mine}, tmp_path / 'again.pth')
    again = create_mae(NARROW, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    load_mae_checkpoint(again, tmp_path / 'again.pth')
    assert all(torch.equal(again.state_dict()[k], sd[k]) for k in sd)
    backbone = create_vit(NARROW, num_classes=7)
    report = backbone.load_state_dict(encoder_state_dict(tmp_path / 'checkpoint-99.pth'), strict=False)
    assert sorted(report.missing_keys) == ['fc_norm.bias', 'fc_norm.weight', 'head.bias', 'head.weight'] and not report.unexpected_keys
    assert torch.equal(backbone.blocks[0].attn.q_bias, sd['encoder.blocks.0.attn.q_bias'])
    with pytest.raises(ValueError, match='decoder.blocks.0.attn.qkv.weight'):
        load_mae_checkpoint(model, {'model': {**sd, 'decoder.blocks.0.attn.qkv.weight': torch.zeros(3, 3)}})

def toy_loaders():
    m = tiny_mae()
    images, clips = m.normalize(toy_shapes(128, None, seed=1)), m.normalize(toy_shapes(64, 4, seed=2))
    return (DataLoader(TensorDataset(images, torch.zeros(128)), batch_size=32, shuffle=True),  # labels are dropped
            DataLoader(TensorDataset(clips), batch_size=16, shuffle=True))

def test_loss_falls_on_fixed_seed():
    runs = []
    for _ in range(2):
        seed_everything(0)
        model = tiny_mae(norm_pix_loss=False)
        learn = pretrain_learner(model, *toy_loaders(), video_share=1.0, lr=2e-3, warmup=0.1, quiet=True)
        learn.fit(4)
        runs.append(learn.modality_losses)
    for k in ('image', 'video'): assert runs[0][k][-1] < 0.6 * runs[0][k][0], runs[0]
    assert runs[0] == runs[1]  # same seed, same run

def test_resume_equals_uninterrupted(tmp_path):
    from fastai.callback.core import Callback
    class Stop(Callback):
        order = 95
        def after_epoch(self):
            if self.epoch == 0: raise KeyboardInterrupt
    def run(ckpt, resume=None, stop=False):
        seed_everything(0)
        learn = pretrain_learner(tiny_mae(), *toy_loaders(), lr=2e-3, checkpoint_dir=ckpt, save_every=1, resume=resume,
                                 quiet=True, cbs=[Stop()] if stop else None)
        try: learn.fit(2)
        except KeyboardInterrupt: pass
        return learn
    straight = run(tmp_path / 'a')
    run(tmp_path / 'b', stop=True)
    # one checkpoint, the run manifest, and the lock this (still running) process holds on the folder
    assert sorted(p.name for p in (tmp_path / 'b').iterdir()) == ['epoch_0001.pth', 'manifest.json', 'run.lock']
    torch.rand(5)  # a new process would not share the RNG state
    resumed = run(tmp_path / 'b', resume='last')
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.modality_losses == resumed.modality_losses

def test_bad_input_errors(mae160):
    for bad in (0, 1.0, 1.2, -0.5):
        with pytest.raises(ValueError, match='video_mask_ratio must be a number strictly between 0 and 1'):
            create_mae(NARROW, video_mask_ratio=bad)
    with pytest.raises(ValueError, match='strictly between 0 and 1'): reconstruct(mae160, torch.zeros(1, 3, 160, 160), mask_ratio=0)
    with pytest.raises(ValueError, match='leaving none visible'): mae160.make_mask(torch.zeros(1, 3, 160, 160), mask_ratio=1 - 1e-9)
    with pytest.raises(ValueError, match='hides every token'): mae160(torch.zeros(1, 3, 160, 160), mask=torch.ones(1, 100, dtype=torch.bool))
    with pytest.raises(ValueError, match='15 frames are not divisible by the tubelet size 2'): mae160(torch.zeros(1, 3, 15, 160, 160))
    with pytest.raises(ValueError, match='same number of visible'):
        mae160(torch.zeros(2, 3, 160, 160), mask=torch.tensor([[True] * 90 + [False] * 10, [True] * 91 + [False] * 9]))
    with pytest.raises(ValueError, match="task must be one of"): mae160(torch.zeros(1, 3, 160, 160), 'audio')
    with pytest.raises(ValueError, match='one modality'): mae160(torch.zeros(2, 3, 160, 160), ['image', 'video'])
