import torch
import torch.nn.functional as F
from torch import nn

from models.layers import AdaINLayer, SPADEBlock, SPADELayer, fused_conv


def _slow_instance_norm(x):
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + 1e-5)


def test_fused_convolutions_equal_separate_ones_with_gradients():
    torch.manual_seed(0)
    convs = [nn.Conv2d(8, 5, 3, 1, 1), nn.Conv2d(8, 3, 3, 1, 1)]
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    fused = fused_conv(x, convs)
    assert [t.shape[1] for t in fused] == [5, 3]
    sum((t * (i + 1)).sum() for i, t in enumerate(fused)).backward()
    fused_grads = [x.grad.clone()] + [c.weight.grad.clone() for c in convs] + [c.bias.grad.clone() for c in convs]
    x.grad = None
    for c in convs:
        c.weight.grad = c.bias.grad = None
    separate = [c(x) for c in convs]
    sum((t * (i + 1)).sum() for i, t in enumerate(separate)).backward()
    grads = [x.grad] + [c.weight.grad for c in convs] + [c.bias.grad for c in convs]
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(fused_grads, grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_spade_layer_against_its_formula():
    torch.manual_seed(0)
    layer = SPADELayer(6, 4, hidden=16)
    x, condition = torch.randn(2, 6, 10, 10) * 3 + 1, torch.rand(2, 4, 10, 10)
    hidden = F.conv2d(condition, layer.conv1.weight, layer.conv1.bias, padding=1)
    gamma = F.conv2d(hidden, layer.gamma.weight, layer.gamma.bias, padding=1)
    beta = F.conv2d(hidden, layer.beta.weight, layer.beta.bias, padding=1)
    expected = _slow_instance_norm(x) * (1 + gamma) + beta
    torch.testing.assert_close(layer(x, condition), expected, rtol=1e-4, atol=1e-5)


def test_shared_modulation_serves_every_reference_of_a_frame():
    """x holds k references per frame (sample-major); gamma/beta of one frame modulate all k."""
    torch.manual_seed(0)
    block = SPADEBlock(6, 4, hidden=16)
    frames, refs = 2, 3
    x, condition = torch.randn(frames * refs, 6, 10, 10), torch.rand(frames, 4, 10, 10)
    shared = block(x, modulation=block.modulation_of(condition))
    repeated = block(x, condition.repeat_interleave(refs, dim=0))
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-6)


def test_adain_layer_against_its_formula():
    torch.manual_seed(0)
    layer = AdaINLayer(6, 12)
    x, vector = torch.randn(2, 6, 5, 5) * 2 - 1, torch.randn(2, 12)
    hidden = F.relu(vector @ layer.mlp_shared[0].weight.T + layer.mlp_shared[0].bias)
    gamma = (hidden @ layer.mlp_gamma.weight.T + layer.mlp_gamma.bias)[:, :, None, None]
    beta = (hidden @ layer.mlp_beta.weight.T + layer.mlp_beta.bias)[:, :, None, None]
    torch.testing.assert_close(layer(x, vector), _slow_instance_norm(x) * (1 + gamma) + beta, rtol=1e-4, atol=1e-5)
