"""Checkpoints in and out (`unilearn.interop`): equivalence with `transformers` VideoMAE and with a plain-torch
re-statement of the published S4D forward pass, every wrapper/prefix form, damaged and foreign files, different
architectures, and save/load round trips of every model kind. All checkpoints are built here, in tmp dirs."""
import argparse, io, json, math, pickle, zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from unilearn.vit import create_vit
from unilearn.moae import vit_single, vit_mtl, unilearn_vit, vit_moe
from unilearn.mae import create_mae
from unilearn.interop import (CheckpointError, load_pretrained, save_checkpoint, load_checkpoint, checkpoint_config,
                              export_published, export_videomae, model_config, build_model, read_checkpoint, unilearn_to_videomae, detect_layout)

transformers = pytest.importorskip('transformers')
from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEForPreTraining, VideoMAEModel
transformers.utils.logging.disable_progress_bar()

TINY = dict(embed_dim=48, depth=2, num_heads=3)
TINY4 = dict(embed_dim=48, depth=4, num_heads=3)
GEO = dict(img_size=32, all_frames=4)


def randomise(model, seed=0):
    "Every parameter random (norm weights near 1), so a swapped or dropped name cannot hide behind a zero or a one."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1. if 'norm' in n and n.endswith('weight') else 0.))
    return model.eval()


def hf_config(**kw):
    base = dict(image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=48, num_hidden_layers=2,
                num_attention_heads=3, intermediate_size=192, decoder_hidden_size=24, decoder_num_hidden_layers=1,
                decoder_num_attention_heads=3, decoder_intermediate_size=96, num_labels=5, layer_norm_eps=1e-6)
    return VideoMAEConfig(**{**base, **kw})


@pytest.fixture(scope='module')
def clip():
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- transformers VideoMAE -> ours, same function

@pytest.mark.parametrize('form', ['safetensors_dir', 'sharded_dir', 'bin_dir', 'bin_file', 'module_state_dict'])
def test_videomae_classifier_gives_same_logits(tmp_path, clip, form):
    hf = randomise(VideoMAEForVideoClassification(hf_config()))
    if form == 'module_state_dict': src = hf.state_dict()          # query.bias / value.bias names
    else:
        hf.save_pretrained(tmp_path / 'hf', **({'max_shard_size': '100KB'} if form == 'sharded_dir' else {}))
        src = tmp_path / 'hf'                                         # files use q_bias / v_bias names
        if form == 'sharded_dir': assert (src / 'model.safetensors.index.json').exists()
        if form not in ('safetensors_dir', 'sharded_dir'):
            sd = read_checkpoint(tmp_path / 'hf')
            (tmp_path / 'bin').mkdir()
            src = tmp_path / 'bin' / 'pytorch_model.bin'
            torch.save(sd, src)
            if form == 'bin_dir': src = src.parent
    ours = create_vit(TINY, num_classes=5, **GEO).eval()
    report = load_pretrained(ours, src)
    assert report.layout == 'videomae-hf' and not report.new and not report.unused and not report.mismatched
    with torch.no_grad():
        diff = (ours(clip) - hf(pixel_values=clip.transpose(1, 2)).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_videomae_without_qv_bias_loads_as_zero_biases(clip):
    hf = randomise(VideoMAEForVideoClassification(hf_config(qv_bias=False)))
    ours = randomise(create_vit(TINY, num_classes=5, **GEO), seed=3)    # non-zero biases that must be overwritten
    report = load_pretrained(ours, hf.state_dict())
    assert any('q_bias' in k for k in report.converted)
    assert all(not b.attn.q_bias.any() and not b.attn.v_bias.any() for b in ours.blocks)
    with torch.no_grad():
        torch.testing.assert_close(ours(clip), hf(pixel_values=clip.transpose(1, 2)).logits, atol=1e-4, rtol=1e-4)


def test_bare_videomae_model_is_the_backbone(clip):
    hf = randomise(VideoMAEModel(hf_config()))
    ours = create_vit(TINY, num_classes=7, **GEO).eval()
    report = load_pretrained(ours, hf.state_dict())
    assert sorted(report.new) == ['fc_norm.bias', 'fc_norm.weight', 'head.bias', 'head.weight']
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(clip), hf(clip.transpose(1, 2)).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_ours_to_videomae_and_back(clip):
    ours = randomise(create_vit(TINY, num_classes=5, **GEO))
    hf = VideoMAEForVideoClassification(hf_config()).eval()
    hf.load_state_dict(unilearn_to_videomae(ours.state_dict()), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=clip.transpose(1, 2)).logits, ours(clip), atol=1e-4, rtol=1e-4)
    two = randomise(vit_mtl(TINY, num_classes=dict(image=7, video=5), **GEO))
    with pytest.raises(ValueError, match='task='): unilearn_to_videomae(two.state_dict())
    hf.load_state_dict(unilearn_to_videomae(two.state_dict(), task='video'), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=clip.transpose(1, 2)).logits, two(clip, 'video'), atol=1e-4, rtol=1e-4)


def test_export_videomae_directory_opens_in_transformers(tmp_path, clip):
    two = randomise(vit_mtl(TINY, num_classes=dict(image=7, video=5), **GEO))
    path = export_videomae(two, tmp_path / 'hf', task='video', img_size=32, frames=4)
    hf = VideoMAEForVideoClassification.from_pretrained(path).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=clip.transpose(1, 2)).logits, two(clip, 'video'), atol=1e-4, rtol=1e-4)
    back = load_checkpoint(path)                       # and back into ours through the directory's own config
    with torch.no_grad(): torch.testing.assert_close(back(clip), two(clip, 'video'), atol=1e-6, rtol=1e-6)
    with pytest.raises(CheckpointError, match='moe_layer'):
        export_videomae(unilearn_vit(TINY4, num_experts=4, **GEO), tmp_path / 'x', task='video')


def test_videomae_pretraining_equals_our_mae_on_hidden_tokens(clip):
    hf = randomise(VideoMAEForPreTraining(hf_config(use_mean_pooling=False)))
    mae = create_mae(TINY, decoder_dim=24, decoder_depth=1, decoder_heads=3, **GEO).eval()
    report = load_pretrained(mae, hf.state_dict())
    assert not report.new and not report.unused
    mask = mae.make_mask(clip, 'video', generator=torch.Generator().manual_seed(0), mask_ratio=0.75)
    with torch.no_grad():
        ours = mae(clip, 'video', mask=mask).pred[mask].view(2, -1, 1536)
        theirs = hf(pixel_values=clip.transpose(1, 2), bool_masked_pos=mask).logits
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)


def test_load_checkpoint_reads_a_videomae_directory(tmp_path, clip):
    hf = randomise(VideoMAEForVideoClassification(hf_config()))
    hf.save_pretrained(tmp_path)
    model = load_checkpoint(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), hf(pixel_values=clip.transpose(1, 2)).logits, atol=1e-4, rtol=1e-4)
    VideoMAEForVideoClassification(hf_config(use_mean_pooling=False)).save_pretrained(tmp_path / 'cls')
    with pytest.raises(CheckpointError, match='mean-pools'): load_checkpoint(tmp_path / 'cls')


# ---------------------------------------------------------------- the published forward pass, re-stated

def published_sinusoid(n, d):
    "The published fixed table, written out from its formula with numpy (independent of unilearn.vit)."
    angle = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    angle[:, 0::2], angle[:, 1::2] = np.sin(angle[:, 0::2]), np.cos(angle[:, 1::2])
    return torch.tensor(angle, dtype=torch.float32)[None]


def published_moae(h, sd, p, top_k, capacity_factor):
    "The published SparseMoEWithCapacity semantics: noisy top-k softmax gates, per-expert loop, first tokens up to capacity."
    B, N, D = h.shape
    logits = F.linear(h, sd[p + 'router.topkroute_linear.weight'], sd[p + 'router.topkroute_linear.bias'])
    noise = F.softplus(F.linear(h, sd[p + 'router.noise_linear.weight'], sd[p + 'router.noise_linear.bias']))
    noisy = logits + torch.randn_like(logits) * noise
    top, idx = noisy.topk(top_k, dim=-1)
    gates = torch.full_like(noisy, float('-inf')).scatter(-1, idx, top).softmax(-1)
    E = logits.shape[-1]
    flat, g, idx = h.reshape(-1, D), gates.reshape(-1, E), idx.reshape(-1, top_k)
    cap = int((B * N * top_k / E) * capacity_factor)
    out, dropped = torch.zeros_like(flat), 0
    for e in range(E):
        chosen = torch.nonzero((idx == e).any(-1)).squeeze(-1)
        dropped += max(0, chosen.numel() - cap)
        chosen = chosen[:cap]
        q = f'{p}experts.{e}.'
        y = F.linear(F.gelu(F.linear(flat[chosen], sd[q + 'fc1.weight'], sd[q + 'fc1.bias'])), sd[q + 'fc2.weight'], sd[q + 'fc2.bias'])
        out.index_add_(0, chosen, y * g[chosen, e:e + 1])
    return out.view(B, N, D), dropped


def published_forward(sd, x, num_heads, task=None, top_k=2, capacity_factor=1.0, eps=1e-6):
    "VisionTransformerMoE.forward of the published S4D code, re-stated with plain torch ops on a state dict."
    if x.ndim == 4: x = x.unsqueeze(2).repeat(1, 1, 2, 1, 1)   # PadIm2Video, 'repeat'
    w = sd['patch_embed.proj.weight']
    t = F.conv3d(x, w, sd['patch_embed.proj.bias'], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    B, N, D = t.shape
    t = t + published_sinusoid(N, D)
    depth = 1 + max(int(k.split('.')[1]) for k in sd if k.startswith('blocks.'))
    dropped = 0
    for i in range(depth):
        p = f'blocks.{i}.'
        h = F.layer_norm(t, (D,), sd[p + 'norm1.weight'], sd[p + 'norm1.bias'], eps)
        bias = torch.cat([sd[p + 'attn.q_bias'], torch.zeros_like(sd[p + 'attn.v_bias']), sd[p + 'attn.v_bias']])
        q, k, v = F.linear(h, sd[p + 'attn.qkv.weight'], bias).reshape(B, N, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (D // num_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        t = t + F.linear((attn @ v).transpose(1, 2).reshape(B, N, D), sd[p + 'attn.proj.weight'], sd[p + 'attn.proj.bias'])
        h = F.layer_norm(t, (D,), sd[p + 'norm2.weight'], sd[p + 'norm2.bias'], eps)
        y = F.linear(F.gelu(F.linear(h, sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias'])), sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
        if p + 'moe_layer.router.topkroute_linear.weight' in sd:
            m, d = published_moae(h, sd, p + 'moe_layer.', top_k, capacity_factor)
            y, dropped = y + m, dropped + d
        t = t + y
    pooled = F.layer_norm(t.mean(1), (D,), sd['fc_norm.weight'], sd['fc_norm.bias'], eps)
    head = f'head.{task}.' if task else 'head.'
    return F.linear(pooled, sd[head + 'weight'], sd[head + 'bias']), dropped


def test_exported_moae_model_computes_the_same_in_the_published_forward(tmp_path):
    model = randomise(unilearn_vit(TINY4, num_classes=dict(image=7, video=11), num_experts=4, capacity_factor=1.0, **GEO))
    with torch.no_grad():
        for b in model.blocks[2:]: b.moe_layer.router.noise_linear.bias.fill_(-100.)  # published noise ~ e^-100: deterministic
    export_published(model, tmp_path / 'ft.pth')
    ckpt = torch.load(tmp_path / 'ft.pth', weights_only=True)
    assert list(ckpt) == ['model']
    x = torch.randn(4, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    img = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs, dropped = published_forward(ckpt['model'], x, num_heads=3, task='video', capacity_factor=1.0)
        assert dropped > 0, "the capacity limit should bind in this test, or it tests nothing about it"
        torch.testing.assert_close(model(x, 'video'), theirs, atol=1e-4, rtol=1e-4)
        theirs_img, _ = published_forward(ckpt['model'], img, num_heads=3, task='image', capacity_factor=1.0)
        torch.testing.assert_close(model(img, 'image'), theirs_img, atol=1e-4, rtol=1e-4)


def test_published_file_loads_back_with_the_same_outputs(tmp_path, clip):
    model = randomise(unilearn_vit(TINY4, num_classes=dict(image=7, video=11), num_experts=4, **GEO))
    export_published(model, tmp_path / 'ft.pth')
    fresh = unilearn_vit(TINY4, num_classes=dict(image=7, video=11), num_experts=4, **GEO).eval()
    report = load_pretrained(fresh, tmp_path / 'ft.pth')
    assert not report.new and not report.unused and not report.converted
    with torch.no_grad(): assert torch.equal(fresh(clip, 'video'), model(clip, 'video'))


def test_fused_qkv_bias_key_part_is_dropped_exactly(clip):
    "A timm-style fused qkv.bias: q and v parts kept, the k part dropped; the published forward with the k bias agrees."
    src = randomise(create_vit(TINY, num_classes=5, **GEO))
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    kbias = {}
    for i in range(2):
        p = f'blocks.{i}.attn.'
        kbias[i] = torch.randn(48)
        sd[p + 'qkv.bias'] = torch.cat([sd.pop(p + 'q_bias'), kbias[i], sd.pop(p + 'v_bias')])
    ours = create_vit(TINY, num_classes=5, **GEO).eval()
    report = load_pretrained(ours, sd)
    assert sum('qkv.bias' in k for k in report.converted) == 2
    with torch.no_grad(): torch.testing.assert_close(ours(clip), src(clip), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- containers, prefixes, pre-training files

def _pretraining_dict(vit):
    enc = {f'encoder.{k}': v for k, v in vit.state_dict().items() if not k.startswith(('head.', 'fc_norm.'))}
    return {**enc, 'encoder.norm.weight': torch.ones(48), 'encoder.norm.bias': torch.zeros(48),
            'encoder_to_decoder.weight': torch.randn(24, 48), 'mask_token': torch.zeros(1, 1, 24),
            'decoder.blocks.0.norm1.weight': torch.ones(24), 'decoder.norm.weight': torch.ones(24),
            'decoder.head.weight': torch.randn(1536, 24), 'decoder.head.bias': torch.randn(1536)}

FORMS = {
    'published_pretraining': lambda sd, pre: {'model': pre, 'epoch': 99, 'optimizer': {'state': {}, 'param_groups': []}},
    'mae_dfer_with_args': lambda sd, pre: {'model': pre, 'args': argparse.Namespace(lr=1e-3, model='vit_base')},
    'ddp_module_prefix': lambda sd, pre: {'module': {f'module.{k}': v for k, v in pre.items()}},
    'compiled': lambda sd, pre: {f'_orig_mod.{k}': v for k, v in sd.items()},
    'state_dict_container': lambda sd, pre: {'state_dict': sd},
    'backbone_prefix': lambda sd, pre: {'model': {f'backbone.{k}': v for k, v in sd.items()}},
    'encoder_only': lambda sd, pre: {k: v for k, v in pre.items() if k.startswith('encoder.')},
}

@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('fmt', ['pth', 'legacy_pickle'])
def test_wrapped_and_prefixed_checkpoints_load(tmp_path, clip, form, fmt):
    src = randomise(create_vit(TINY, num_classes=7, **GEO))
    ckpt = FORMS[form](src.state_dict(), _pretraining_dict(src))
    path = tmp_path / 'ckpt.pth'
    torch.save(ckpt, path, _use_new_zipfile_serialization=(fmt == 'pth'))
    dst = create_vit(TINY, num_classes=7, **GEO).eval()
    report = load_pretrained(dst, path)
    assert not report.mismatched
    with torch.no_grad(): torch.testing.assert_close(dst.forward_features(clip), src.forward_features(clip))
    if 'pretraining' in form or 'prefix' in form and 'backbone' not in form:
        assert 'encoder.norm.weight' in report.unused and 'mask_token' in report.unused


def test_pretraining_file_into_every_model_kind():
    src = randomise(create_vit(TINY4, num_classes=7, **GEO))
    pre = {'model': _pretraining_dict(src)}
    for model in (vit_single(TINY4, num_classes=7, **GEO), vit_mtl(TINY4, **GEO), unilearn_vit(TINY4, num_experts=4, **GEO)):
        report = load_pretrained(model, pre)
        assert all('moe_layer' in k or k.startswith(('head.', 'fc_norm.')) for k in report.new), report
        assert torch.equal(model.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)
    moe = vit_moe(TINY4, num_experts=4, **GEO)
    report = load_pretrained(moe, pre)
    assert all(torch.equal(e.fc1.weight, src.blocks[3].mlp.fc1.weight) for e in moe.blocks[3].moe_layer.experts)
    assert not [k for k in report.new if 'experts' in k]
    mae = create_mae(TINY4, decoder_dim=24, decoder_depth=1, decoder_heads=3, **GEO)
    with pytest.raises(CheckpointError, match=r'lacks .* decoder\.blocks\.0\.'):   # the toy decoder above is not a whole decoder
        load_pretrained(mae, pre)


def test_fp16_checkpoint_loads_into_fp32_model(clip):
    src = randomise(create_vit(TINY, num_classes=5, **GEO)).half()
    dst = create_vit(TINY, num_classes=5, **GEO).eval()
    load_pretrained(dst, src.state_dict())
    assert dst.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert torch.equal(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight.float())


def test_tubelet_and_positions_are_converted(clip):
    img_vit = randomise(create_vit(TINY, num_classes=5, img_size=32, all_frames=4, tubelet_size=1))
    sd = {k: (v[:, :, 0] if k == 'patch_embed.proj.weight' else v) for k, v in img_vit.state_dict().items()}
    sd['pos_embed'] = img_vit.positions(64).clone()            # a stored copy of the fixed table: dropped
    dst = create_vit(TINY, num_classes=5, **GEO).eval()
    report = load_pretrained(dst, sd)
    assert 'patch_embed.proj.weight' in report.converted and 'pos_embed' in report.converted
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(dst(image), img_vit(image.unsqueeze(2)), atol=1e-4, rtol=1e-4)
    four = randomise(create_vit(TINY, num_classes=5, img_size=32, all_frames=8, tubelet_size=4))
    report = load_pretrained(dst, four.state_dict())
    assert 'tubelet (4, 16, 16) -> (2, 16, 16)' in report.converted['patch_embed.proj.weight']
    static = image.unsqueeze(2).expand(-1, -1, 4, -1, -1)   # one tubelet of `four`, two of ours: the same tokens
    with torch.no_grad():
        ours_tokens = dst.patch_embed(static).view(2, 2, 4, 48)
        torch.testing.assert_close(ours_tokens[:, 0], four.patch_embed(static), atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(ours_tokens[:, 1], four.patch_embed(static), atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------- different architectures and unknown layouts

def test_different_architectures_are_errors_that_name_keys():
    src = randomise(create_vit(TINY, num_classes=7, **GEO))
    with pytest.raises(CheckpointError, match=r'blocks\.0\.attn\.qkv\.weight: checkpoint \(144, 48\) vs model \(72, 24\)'):
        load_pretrained(create_vit(dict(embed_dim=24, depth=2, num_heads=3), **GEO), src.state_dict())
    with pytest.raises(CheckpointError, match=r'lacks .* backbone weights of the model: blocks\.2\.\*') as e:
        load_pretrained(create_vit(dict(embed_dim=48, depth=3, num_heads=3), num_classes=7, **GEO), src.state_dict())
    assert e.value.report is not None and 'blocks.2.attn.qkv.weight' in e.value.report.new
    deep = randomise(create_vit(dict(embed_dim=48, depth=3, num_heads=3), num_classes=7, **GEO))
    with pytest.raises(CheckpointError, match=r'no place in the model: blocks\.2\.\*'):
        load_pretrained(create_vit(TINY, num_classes=7, **GEO), deep.state_dict())
    with pytest.raises(CheckpointError, match=r'patch_embed\.proj\.weight: checkpoint \(48, 3, 2, 16, 16\) vs model \(48, 3, 2, 8, 8\)'):
        load_pretrained(create_vit(TINY, num_classes=7, patch_size=8, **GEO), src.state_dict())


def test_moae_checkpoint_into_plain_vit_needs_explicit_ignore():
    moae = randomise(unilearn_vit(TINY4, num_experts=4, **GEO))
    plain = vit_single(TINY4, num_classes=7, **GEO)
    with pytest.raises(CheckpointError, match=r'blocks\.\{2\.\.3\}\.moe_layer\.\*'): load_pretrained(plain, moae.state_dict())
    report = load_pretrained(plain, moae.state_dict(), ignore=['*.moe_layer.*', 'head.*'])
    assert sorted(report.new) == ['head.bias', 'head.weight'] and len(report.unused) > 0


def test_head_shape_mismatch_and_ignore():
    src = randomise(create_vit(TINY, num_classes=400, **GEO))
    with pytest.raises(CheckpointError, match=r'head\.weight: checkpoint \(400, 48\) vs model \(7, 48\)'):
        load_pretrained(create_vit(TINY, num_classes=7, **GEO), src.state_dict())
    report = load_pretrained(create_vit(TINY, num_classes=7, **GEO), src.state_dict(), ignore=['head.*'])
    assert sorted(report.new) == ['head.bias', 'head.weight'] and sorted(report.unused) == ['head.bias', 'head.weight']


@pytest.mark.parametrize('extra,match', [
    ({'pos_embed': torch.randn(1, 8, 48)}, 'learned positional embedding'),
    ({'cls_token': torch.zeros(1, 1, 48)}, 'cls_token'),
])
def test_parts_our_vit_does_not_have(extra, match):
    src = randomise(create_vit(TINY, num_classes=7, **GEO))
    with pytest.raises(CheckpointError, match=match): load_pretrained(create_vit(TINY, num_classes=7, **GEO), {**src.state_dict(), **extra})
    load_pretrained(create_vit(TINY, num_classes=7, **GEO), {**src.state_dict(), **extra}, ignore=list(extra))


def test_lgi_former_and_unknown_layouts():
    lgi = {'model': {'encoder.patch_embed.proj.weight': torch.zeros(48, 3, 2, 16, 16), 'encoder.lg_region_tokens': torch.zeros(8, 48),
                     'encoder.blocks.0.first_attn.q.weight': torch.zeros(48, 48)}}
    with pytest.raises(CheckpointError, match='LGI-Former'): load_pretrained(create_vit(TINY, **GEO), lgi)
    with pytest.raises(CheckpointError, match=r'Unknown checkpoint layout.*conv1\.weight'):
        load_pretrained(create_vit(TINY, **GEO), {'conv1.weight': torch.zeros(4), 'fc.weight': torch.zeros(4)})
    assert detect_layout(VideoMAEForPreTraining(hf_config()).state_dict()) == 'videomae-hf'


# ---------------------------------------------------------------- damaged and foreign files

def _vit_file(tmp_path, fmt):
    sd = create_vit(TINY, num_classes=7, **GEO).state_dict()
    if fmt == 'safetensors':
        path = tmp_path / 'w.safetensors'; save_file(sd, path)
    else:
        path = tmp_path / 'w.pth'; torch.save({'model': sd}, path, _use_new_zipfile_serialization=(fmt == 'zip'))
    return path

@pytest.mark.parametrize('fmt', ['safetensors', 'zip', 'legacy'])
@pytest.mark.parametrize('keep', [0.001, 0.3, 0.9, 0.999])
def test_truncated_files_get_a_clear_error(tmp_path, fmt, keep):
    path = _vit_file(tmp_path, fmt)
    data = path.read_bytes()
    cut = tmp_path / f'cut{path.suffix}'
    cut.write_bytes(data[:max(1, int(len(data) * keep))])
    with pytest.raises(CheckpointError, match=r'truncated|damaged|not a checkpoint') as e:
        load_pretrained(create_vit(TINY, num_classes=7, **GEO), cut)
    assert str(cut) in str(e.value)


@pytest.mark.parametrize('name,content,match', [
    ('empty.pt', b'', 'empty'),
    ('labels.pth', b'video_name,label\n00001,3\n', 'not a checkpoint'),
    ('image.pt', b'\x89PNG\r\n\x1a\n' + bytes(64), 'not a checkpoint'),
    ('config.safetensors', json.dumps({'a': 1}).encode(), 'not a checkpoint'),
    ('indented.safetensors', b'        {"a": 1, "b": [1, 2, 3]}', 'not a checkpoint'),
    ('random.bin', bytes(range(256)) * 4, 'not a checkpoint'),
])
def test_non_checkpoints_get_a_clear_error(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=match): load_pretrained(create_vit(TINY, **GEO), tmp_path / name)
    with pytest.raises(CheckpointError, match=match): load_checkpoint(tmp_path / name)


def test_other_foreign_objects(tmp_path):
    with zipfile.ZipFile(tmp_path / 'frames.zip', 'w') as z: z.writestr('0001.jpg', b'x' * 100)
    with pytest.raises(CheckpointError, match='zip archive but not a PyTorch checkpoint'):
        load_pretrained(create_vit(TINY, **GEO), tmp_path / 'frames.zip')
    (tmp_path / 'plain.pkl').write_bytes(pickle.dumps({'weights': [1, 2]}, protocol=2))
    with pytest.raises(CheckpointError, match='pickle but not a PyTorch checkpoint'): load_pretrained(create_vit(TINY, **GEO), tmp_path / 'plain.pkl')
    torch.save([1, 2, 3], tmp_path / 'list.pt')
    with pytest.raises(CheckpointError, match='holds a list'): load_pretrained(create_vit(TINY, **GEO), tmp_path / 'list.pt')
    torch.save({'epoch': 3, 'optimizer': {}}, tmp_path / 'opt.pt')
    with pytest.raises(CheckpointError, match=r"keys \['epoch', 'optimizer'\]"): load_pretrained(create_vit(TINY, **GEO), tmp_path / 'opt.pt')
    (tmp_path / 'dir').mkdir()
    with pytest.raises(CheckpointError, match='not a model directory'): load_pretrained(create_vit(TINY, **GEO), tmp_path / 'dir')
    with pytest.raises(FileNotFoundError, match='nope.pth'): load_pretrained(create_vit(TINY, **GEO), tmp_path / 'nope.pth')


class Opaque:  # a class a checkpoint may carry; unpickling it needs trust
    def __init__(self): self.x = 1

def test_untrusted_pickles_need_trust(tmp_path):
    sd = create_vit(TINY, num_classes=7, **GEO).state_dict()
    torch.save({'model': sd, 'extra': Opaque()}, tmp_path / 'odd.pth')
    with pytest.raises(CheckpointError, match=r'Opaque.*trust=True'): load_pretrained(create_vit(TINY, num_classes=7, **GEO), tmp_path / 'odd.pth')
    load_pretrained(create_vit(TINY, num_classes=7, **GEO), tmp_path / 'odd.pth', trust=True)


# ---------------------------------------------------------------- our checkpoints: config + weights

MODEL_KINDS = {
    'vit': lambda: create_vit(TINY, num_classes=5, drop_path_rate=0.1, **GEO),
    'vit_single': lambda: vit_single(TINY4, num_classes=7, **GEO),
    'vit_mtl': lambda: vit_mtl(TINY4, num_classes=dict(image=7, video=11), **GEO),
    'unilearn': lambda: unilearn_vit(TINY4, num_classes=dict(image=7, video=11), moae=[1, 3], num_experts=4, top_k=1,
                                     capacity_factor=1.5, noise_at_eval=True, aux_loss_coef=0., **GEO),
    'vit_moe': lambda: vit_moe(TINY4, num_experts=3, **GEO),
    'mae': lambda: create_mae(TINY, decoder_dim=24, decoder_depth=1, decoder_heads=3, video_mask_ratio=0.5, masking='tube', **GEO),
}

@pytest.mark.parametrize('kind', MODEL_KINDS)
def test_save_and_load_checkpoint_round_trip(tmp_path, clip, kind):
    model = randomise(MODEL_KINDS[kind]())
    path = save_checkpoint(model, tmp_path / 'm.safetensors', classes={'video': [str(i) for i in range(11)]},
                           input=dict(img_size=32, frames=4))
    back = load_checkpoint(path)
    assert type(back) is type(model) and not back.training
    assert back.unilearn_config['info']['input'] == dict(img_size=32, frames=4)
    assert back.unilearn_config['kwargs']['img_size'] == 32
    for k, v in model.state_dict().items(): assert torch.equal(back.state_dict()[k], v), k
    torch.manual_seed(0)
    with torch.no_grad():
        if kind == 'mae':
            mask = model.make_mask(clip, 'video', generator=torch.Generator().manual_seed(0))
            assert torch.equal(back(clip, 'video', mask=mask).pred, model(clip, 'video', mask=mask).pred)
            assert back.maskings['video'].kind == 'tube' and back.maskings['video'].mask_ratio == 0.5
        elif kind == 'unilearn':   # noise at eval: same seed, same noise
            torch.manual_seed(5); a = model(clip, 'video'); torch.manual_seed(5); b = back(clip, 'video')
            assert torch.equal(a, b)
            layer = back.blocks[1].moe_layer
            assert (layer.top_k, layer.capacity_factor, layer.router.noise_at_eval, back.moe_blocks) == (1, 1.5, True, [1, 3])
        elif kind == 'vit': assert torch.equal(back(clip), model(clip))
        else: assert torch.equal(back(clip, 'video'), model(clip, 'video'))
    # the export of the same model loads into a model rebuilt from the config with nothing new or unused
    fresh = build_model(checkpoint_config(path))
    report = load_pretrained(fresh, export_published(model))
    assert not report.new and not report.unused


@pytest.mark.parametrize('kind', [k for k in MODEL_KINDS if k != 'mae'])
def test_geometry_is_recorded_from_the_model_not_guessed(tmp_path, kind):
    for img_size, frames in [(32, 4), (48, 2), (16, 16)]:
        model = MODEL_KINDS[kind]() if (img_size, frames) == (32, 4) else \
            type(MODEL_KINDS[kind]())(**{**MODEL_KINDS[kind]()._hub_mixin_config, 'img_size': img_size, 'all_frames': frames})
        cfg = checkpoint_config(save_checkpoint(model, tmp_path / f'{img_size}_{frames}.safetensors'))   # no input=
        assert (cfg['kwargs']['img_size'], cfg['kwargs']['all_frames']) == (img_size, frames)
        assert cfg['info']['input'] == dict(img_size=img_size, frames=frames)


@pytest.mark.parametrize('kind', [k for k in MODEL_KINDS if k != 'mae'])
def test_save_pretrained_folder_round_trip(tmp_path, clip, kind):
    model = randomise(MODEL_KINDS[kind]()).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((tmp_path / 'config.json').read_text())
    assert (config['img_size'], config['all_frames']) == (32, 4)
    back = type(model).from_pretrained(tmp_path)
    assert type(back) is type(model) and not back.training and back.num_frames == 4
    for k, v in model.state_dict().items(): assert torch.equal(back.state_dict()[k], v), k
    task = () if kind == 'vit' else ('video',)
    with torch.no_grad():
        torch.manual_seed(5); a = model(clip, *task); torch.manual_seed(5); b = back(clip, *task)
    assert torch.equal(a, b)


def test_save_pretrained_refuses_what_config_json_cannot_rebuild(tmp_path):
    from functools import partial
    from timm.layers import Mlp
    model = unilearn_vit(TINY4, num_experts=4, **GEO)
    odd = type(model)(**{**model._hub_mixin_config, 'moae_kwargs': dict(num_experts=4, expert_layer=partial(Mlp, bias=False))})
    with pytest.raises(ValueError, match='would not rebuild'): odd.save_pretrained(tmp_path)
    from unilearn.moae import NoisyTopKRouter
    class Router(NoisyTopKRouter): pass
    own = type(model)(**{**model._hub_mixin_config, 'moae_kwargs': dict(num_experts=4, router_layer=Router)})
    with pytest.raises(ValueError, match='expert_layer of their own'): model_config(own)
    with pytest.raises(FileNotFoundError, match='model.safetensors'): type(model).from_pretrained(tmp_path)


def test_joint_model_from_a_published_pretraining_file_round_trips(tmp_path, clip):
    from unilearn.joint import create_model
    mae = randomise(create_mae(TINY4, decoder_dim=24, decoder_depth=1, decoder_heads=3, **GEO))
    export_published(mae, tmp_path / 'pretrained.pth')
    model = create_model(TINY4, num_classes={'image': 7, 'video': 11}, num_experts=4, mae_checkpoint=tmp_path / 'pretrained.pth',
                         verbose=False, **GEO).eval()
    assert torch.equal(model.blocks[1].attn.qkv.weight, mae.encoder.blocks[1].attn.qkv.weight)
    back = load_checkpoint(save_checkpoint(model, tmp_path / 'ft.safetensors', input=dict(img_size=32, frames=4)))
    with torch.no_grad(): assert torch.equal(back(clip, 'video'), model(clip, 'video'))
    fresh = unilearn_vit(TINY4, num_classes={'image': 7, 'video': 11}, num_experts=4, **GEO).eval()
    report = load_pretrained(fresh, tmp_path / 'pretrained.pth')     # the same start as create_model's own loader
    assert set(report.loaded) == set(model.load_report.loaded)


def test_config_is_checked_when_saving_and_reading(tmp_path):
    vit = create_vit(TINY, num_classes=5, **GEO)
    with pytest.raises(CheckpointError, match='does not rebuild this model'):
        save_checkpoint(vit, tmp_path / 'a.safetensors', config=dict(builder='unilearn.vit.create_vit', kwargs=dict(size=TINY, num_classes=3)))
    good = model_config(vit)
    save_checkpoint(vit, tmp_path / 'ok.safetensors', config=good)      # verified once for this config and model...
    other = create_vit(TINY, num_classes=3, **GEO)                        # ...which must not vouch for another model
    with pytest.raises(CheckpointError, match='does not rebuild this model'): save_checkpoint(other, tmp_path / 'b.safetensors', config=good)
    with pytest.raises(ValueError, match='JSON'):
        save_checkpoint(vit, tmp_path / 'a.safetensors', input=dict(size=torch.Size([1])), extra=object())
    p = save_checkpoint(vit, tmp_path / 'v.safetensors', config=dict(model_config(vit), dataset='DFEW'))
    assert checkpoint_config(p)['info']['dataset'] == 'DFEW'
    sd = read_checkpoint(p)
    bad = json.loads(json.dumps(checkpoint_config(p)))
    for builder, match in (('os.system', 'not a constructor inside unilearn'), ('unilearn.vit.nope', 'does not exist')):
        save_file(sd, tmp_path / 'x.safetensors', metadata={'unilearn': json.dumps({**bad, 'builder': builder})})
        with pytest.raises(CheckpointError, match=match): load_checkpoint(tmp_path / 'x.safetensors')
    save_file(sd, tmp_path / 'new.safetensors', metadata={'unilearn': json.dumps({**bad, 'version': 99})})
    with pytest.raises(CheckpointError, match='newer unilearn'): load_checkpoint(tmp_path / 'new.safetensors')
    save_file({k: v for k, v in sd.items() if k != 'head.weight'}, tmp_path / 'part.safetensors', metadata={'unilearn': json.dumps(bad)})
    with pytest.raises(CheckpointError, match=r'missing head\.weight'): load_checkpoint(tmp_path / 'part.safetensors')
    save_file(sd, tmp_path / 'plain.safetensors')
    with pytest.raises(CheckpointError, match='without a unilearn config'): load_checkpoint(tmp_path / 'plain.safetensors')


def test_ddp_wrapped_model_saves_its_inner_model(tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self, m): super().__init__(); self.module = m
    vit = randomise(create_vit(TINY, num_classes=5, **GEO))
    back = load_checkpoint(save_checkpoint(Wrapper(vit), tmp_path / 'w.safetensors'))
    assert set(back.state_dict()) == set(vit.state_dict())
    target = Wrapper(create_vit(TINY, num_classes=5, **GEO))              # loading into a wrapped model fills the inner one
    report = load_pretrained(target, {'model': {f'module.{k}': v for k, v in vit.state_dict().items()}})
    assert not report.new and torch.equal(target.module.head.weight, vit.head.weight)


def test_export_refuses_what_the_published_code_cannot_hold():
    with pytest.raises(CheckpointError, match='adapter_residual'):
        export_published(unilearn_vit(TINY4, adapter_residual=True, **GEO))
    m = create_vit(TINY, num_classes=5, **GEO)
    m.register_parameter('temperature', torch.nn.Parameter(torch.ones(1)))
    with pytest.raises(CheckpointError, match='temperature'): export_published(m)
