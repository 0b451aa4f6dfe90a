"""MoAE layer against an independent, slow statement of its definition, over many configurations: outputs AND
gradients (of the input, the experts and the router), with and without the capacity limit. Parametrised sweeps
read better here than in the notebook."""
import pytest
import torch
import torch.nn as nn

from unilearn.moae import MoAELayer, unilearn_vit, vit_moe, moe_layers, track_gates, gate_stats


def reference(layer, x):
    "Every expert on every token; keep a (token, expert) pair if routed there and, with a capacity, if it came in time."
    flat = x.reshape(-1, x.shape[-1])
    n, k, E = flat.shape[0], layer.top_k, layer.num_experts
    route = layer.router(flat)
    cap = layer.capacity(n)
    keep = torch.zeros(n, E)
    seen = [0] * E
    for t in range(n):                      # first come, first served in token order
        for e in route.experts[t].tolist():
            if cap is None or seen[e] < cap: keep[t, e] = 1.
            seen[e] += 1
    gates = torch.zeros(n, E).scatter(1, route.experts, route.weights) * keep
    outs = torch.stack([ex(flat) + (flat if layer.adapter_residual else 0) for ex in layer.experts], 1)
    return (gates[..., None] * outs).sum(1).view(x.shape)


def grads(layer, x, fn, g):
    layer.zero_grad(set_to_none=True)
    torch.manual_seed(123)                  # the same router noise for both computations in training mode
    x = x.detach().requires_grad_()
    out = fn(layer, x)
    (out * g).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in layer.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('E,k,cap,residual', [(8, 2, None, False), (4, 1, None, True), (8, 2, 1.0, False),
                                               (6, 3, 0.5, True), (2, 2, None, False), (8, 2, 1.25, False)])
def test_outputs_and_gradients_match_definition(E, k, cap, residual, training):
    torch.manual_seed(E * 10 + k)
    layer = MoAELayer(24, num_experts=E, top_k=k, capacity_factor=cap, adapter_residual=residual).train(training)
    for ex in layer.experts: nn.init.normal_(ex.fc2.bias, std=.1)
    x = torch.randn(2, 15, 24)
    g = torch.randn(2, 15, 24)
    o1, gx1, gp1 = grads(layer, x, lambda l, v: l(v), g)
    o2, gx2, gp2 = grads(layer, x, reference, g)
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx1, gx2, rtol=1e-4, atol=1e-5)
    used = {n for n in gp2 if gp2[n].abs().sum() > 0}   # experts nobody reached have zero grads in the reference
    assert used <= set(gp1), f"parameters without gradient: {used - set(gp1)}"
    for n in used: torch.testing.assert_close(gp1[n], gp2[n], rtol=1e-4, atol=1e-5, msg=n)
    if k > 1: assert any('router.topkroute_linear' in n for n in used)  # k=1: the weight is softmax of one value, 1


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    layer = MoAELayer(64).eval()
    x = torch.randn(4, 50, 64)
    with torch.no_grad():
        ref = layer(x)
        with torch.autocast('cpu', dtype=torch.bfloat16): out = layer(x)
    assert out.dtype == torch.float32     # gate weights are fp32, so the mixture is accumulated in fp32
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.02)


@pytest.mark.parametrize('build', [unilearn_vit, vit_moe])
def test_training_step_reaches_every_routed_expert(build):
    "One step on both tasks: the loss (with the aux term) gives gradients to the routers and to the experts that got tokens."
    torch.manual_seed(0)
    m = build(dict(embed_dim=48, depth=4, num_heads=3), img_size=32, all_frames=4).train()
    track_gates(m)
    loss = 0
    for x, task in ((torch.randn(2, 3, 32, 32), 'image'), (torch.randn(2, 3, 4, 32, 32), 'video')):
        loss = loss + m(x, task).logsumexp(-1).mean() + m.aux_loss()
    loss.backward()
    st = gate_stats(m)
    for li, (i, layer) in enumerate(moe_layers(m)):
        assert layer.router.topkroute_linear.weight.grad.abs().sum() > 0
        routed = (st['count']['image'][li] + st['count']['video'][li]) > 0
        for e, ex in enumerate(layer.experts):
            has_grad = ex.fc1.weight.grad is not None and ex.fc1.weight.grad.abs().sum() > 0
            assert has_grad == bool(routed[e]), (i, e)


# ---- parts passed in, blocks built in place, timm citizenship ----
from functools import partial
import subprocess, sys
from timm.layers import Mlp
from unilearn.vit import VisionTransformer, Block, create_vit
from unilearn.moae import MultiTaskViT, MoAEBlock, MoEBlock, NoisyTopKRouter, Routing, vit_mtl, vit_single

T4 = dict(embed_dim=48, depth=4, num_heads=3)
GEO = dict(img_size=32, all_frames=4)


class FirstTwo(nn.Module):
    "A router that sends every token to experts 0 and 1 with weights 0.75 / 0.25."
    def __init__(self, dim, num_experts, top_k, noise_at_eval=False):
        super().__init__()
        self.lin = nn.Linear(dim, num_experts)
    def forward(self, x):
        n = x.shape[0]
        return Routing(torch.tensor([[.75, .25]]).expand(n, 2), torch.tensor([[0, 1]]).expand(n, 2), self.lin(x))


def test_router_and_expert_layers_are_passed_in():
    layer = MoAELayer(16, num_experts=3, top_k=2, router_layer=FirstTwo, expert_layer=partial(Mlp, bias=False)).eval()
    assert isinstance(layer.router, FirstTwo) and layer.experts[0].fc1.bias is None and layer.dispatch == 'sorted'
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(layer(x), .75 * layer.experts[0](x) + .25 * layer.experts[1](x))
    with pytest.raises(ValueError, match='dense'): MoAELayer(16, expert_layer=partial(Mlp, bias=False), dispatch='dense')
    assert 'router_layer' in MoAELayer.__doc__ and 'Example' in MoAELayer.__doc__


def test_moae_blocks_are_built_by_block_fn():
    m = unilearn_vit(T4, num_experts=4, moae=[0, 2], **GEO)
    assert [type(b) for b in m.blocks] == [MoAEBlock, Block, MoAEBlock, Block] and m.moe_blocks == [0, 2]
    assert [type(b) for b in vit_moe(T4, num_experts=4, **GEO).blocks] == [Block, Block, MoEBlock, MoEBlock]
    v = VisionTransformer(depth=2, embed_dim=48, num_heads=3, block_fn=[Block, partial(MoAEBlock, num_experts=2)], **GEO)
    assert isinstance(v.blocks[1], MoAEBlock) and v.blocks[1].moe_layer.num_experts == 2
    with pytest.raises(ValueError, match='depth=3'): VisionTransformer(depth=3, embed_dim=48, num_heads=3, block_fn=[Block])
    with pytest.raises(ValueError, match='moae_kind'): MultiTaskViT(moae='later', moae_kind='moe', **T4, **GEO)
    old = vit_moe(T4, num_experts=4, moe=[1], **GEO)           # the placement's former name still builds
    assert old.moe_blocks == [1] and old.moae_kind == 'ffn'


@pytest.mark.parametrize('build', [lambda: create_vit(T4, **GEO), lambda: unilearn_vit(T4, num_experts=4, **GEO),
                                   lambda: vit_moe(T4, num_experts=4, capacity_factor=1.0, **GEO)],
                         ids=['vit', 'unilearn', 'vit_moe'])
def test_grad_checkpointing_gives_the_same_gradients(build):
    torch.manual_seed(0)
    m, x = build().train(), torch.randn(2, 3, 4, 32, 32)
    task = () if type(m) is VisionTransformer else ('video',)
    out = []
    for on in (False, True):
        m.set_grad_checkpointing(on)
        reset = track_gates(m, True); [l.stats.clear() for _, l in moe_layers(m)]
        m.zero_grad(); torch.manual_seed(1)               # the same router noise in both runs
        loss = m(x, *task).square().sum() + (m.aux_loss() if task else 0)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None],
                    [l.stats['video']['count'].clone() for _, l in moe_layers(m)]))
    (l0, g0, c0), (l1, g1, c1) = out
    torch.testing.assert_close(l1, l0)
    assert len(g0) == len(g1)
    for a, b in zip(g0, g1): torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(c0, c1): assert torch.equal(a, b)           # gates counted once, not again when recomputed


KINDS = ['vit', 'vit_mtl', 'moae', 'vit_moe']

@pytest.mark.parametrize('kind', KINDS)
def test_timm_create_model_of_every_kind(kind):
    import timm
    m = timm.create_model(f'unilearn_{kind}_tiny_patch16_160', depth=4, num_experts=4, **GEO) if kind in ('moae', 'vit_moe') \
        else timm.create_model(f'unilearn_{kind}_tiny_patch16_160', depth=4, **GEO)
    cfg = m.pretrained_cfg
    assert m.default_cfg == cfg and cfg['architecture'] == f'unilearn_{kind}_tiny_patch16_160'
    assert (cfg['input_size'], cfg['num_frames'], cfg['mean'], cfg['std']) == ((3, 32, 32), 4, (0.485, 0.456, 0.406),
                                                                            (0.229, 0.224, 0.225))
    assert cfg['num_classes'] == (7 if kind == 'vit' else dict(image=7, video=7)) == m.num_classes
    assert getattr(m, 'timm_kind', 'vit') == kind
    assert m.no_weight_decay() == {'pos_embed'} and m.get_classifier() is m.head
    m.reset_classifier(5 if kind == 'vit' else dict(video=5))
    args = (torch.randn(1, 3, 4, 32, 32),) + (() if kind == 'vit' else ('video',))
    assert m.eval()(*args).shape == (1, 5)
    with pytest.raises(ValueError, match='never downloads'): timm.create_model(f'unilearn_{kind}_tiny_patch16_160', pretrained=True)


def test_timm_layer_decay_and_save_for_hf(tmp_path):
    import timm
    from timm.optim import param_groups_layer_decay, create_optimizer_v2
    m = timm.create_model('unilearn_moae_tiny_patch16_160', depth=4, num_experts=4, **GEO).eval()
    groups = param_groups_layer_decay(m, weight_decay=0.05, layer_decay=0.5)
    name = {id(p): n for n, p in m.named_parameters()}
    scale = {name[id(p)]: g['lr_scale'] for g in groups for p in g['params']}
    decay = {name[id(p)]: g['weight_decay'] for g in groups for p in g['params']}
    assert scale['patch_embed.proj.weight'] == 0.5 ** 5 and scale['blocks.0.attn.qkv.weight'] == 0.5 ** 4
    assert scale['blocks.3.moe_layer.router.topkroute_linear.weight'] == 0.5 and scale['head.video.weight'] == 1.0
    assert scale['fc_norm.weight'] == 0.5 and (decay['blocks.0.attn.q_bias'], decay['blocks.0.attn.qkv.weight']) == (0, 0.05)
    opt = create_optimizer_v2(m, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert sorted({g['lr_scale'] for g in opt.param_groups}) == [0.5 ** i for i in range(5, -1, -1)]
    timm.models.save_for_hf(m, tmp_path, safe_serialization=True)
    back = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad(): assert torch.equal(back(x, 'image'), m(x, 'image'))
    assert back.pretrained_cfg['num_frames'] == 4 and back.moe_blocks == m.moe_blocks


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()


def test_import_unilearn_is_light_and_registers_in_either_order():
    assert _run("import unilearn, sys; print('torch' in sys.modules, 'timm' in sys.modules)") == ['False', 'False']
    names = "print(sorted(timm.list_models('unilearn_*')) == sorted(f'unilearn_{k}_{s}_patch16_160' " \
            "for k in unilearn.TIMM_KINDS for s in unilearn.TIMM_SIZES))"
    for first in ('import unilearn, timm', 'import timm, unilearn', 'import unilearn.moae, timm; import unilearn'):
        assert _run(f"{first}; {names}") == ['True'], first
