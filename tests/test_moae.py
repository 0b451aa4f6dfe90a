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
