"""Token models (vision transformers): CAMs through the token -> grid layout, refusals."""

from __future__ import annotations

import pytest
import torch
from vit_models import ConvAsTokens, TinyViT  # tests/models/ is on sys.path (no __init__.py)

import convlens as cl
from convlens.errors import LayerError, UnsupportedModelError
from convlens.models.tokens import TokenLayout, infer_layout, to_grid


def _vit() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT().eval()


def _reference_gradcam(model: torch.nn.Module, x: torch.Tensor, layer: str, target: int,
                       prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM written out in float64: tokens of ``layer``, class token dropped by hand."""
    model = model.double()
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: store.setdefault("t", out))
    try:
        t_logits = model(x.double())
    finally:
        handle.remove()
    tokens = store["t"]
    (grad,) = torch.autograd.grad(t_logits[:, target].sum(), tokens)
    n, _, d = tokens.shape
    a = tokens.detach()[:, prefix:].permute(0, 2, 1).reshape(n, d, *grid)
    g = grad[:, prefix:].permute(0, 2, 1).reshape(n, d, *grid)
    weights = g.mean(dim=(2, 3), keepdim=True)
    return (weights * a).sum(1, keepdim=True).clamp_min(0)


def test_gradcam_on_a_vit_block_matches_a_float64_reference(snapshot):
    model = _vit()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    snap = snapshot(model)
    # The last block's own patch tokens never reach a head that reads the class token (their
    # gradient is 0); its norm1 output (the last attention's input) is the usual choice.
    got = cl.attribute(model, x, "gradcam", target=2, layer="blocks.1.norm1")
    snap.assert_unchanged()
    assert got.shape == (3, 1, 4, 4)
    expected = _reference_gradcam(_vit(), x, "blocks.1.norm1", 2, prefix=1, grid=(4, 4))
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5 * float(
        expected.abs().max()))
    last = cl.attribute(model, x, "gradcam", target=2, layer="blocks.1", relu=False)
    assert float(last.abs().max()) == 0.0


def test_token_layer_of_a_cnn_gives_the_cnn_layer_cam():
    """Tokens that are a conv map flattened behind a prefix token: the CAMs must coincide."""
    torch.manual_seed(0)
    model = ConvAsTokens().eval()
    x = torch.randn(2, 3, 12, 12)
    for method in ("gradcam", "hirescam", "layercam", "eigencam"):
        on_tokens = cl.attribute(model, x, method, target=1, layer="tokens")
        on_conv = cl.attribute(model, x, method, target=1, layer="conv")
        assert on_tokens.shape == on_conv.shape == (2, 1, 6, 6)
        torch.testing.assert_close(on_tokens, on_conv, rtol=1e-5, atol=1e-6)


def test_register_tokens_are_dropped_with_timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=4, embed_dim=8, depth=2, num_heads=2, num_classes=3,
        reg_tokens=4).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens = model.blocks[1](model.blocks[0](model._pos_embed(model.patch_embed(x))))
    assert tokens.shape == (2, 1 + 4 + 16, 8)
    assert infer_layout(tuple(tokens.shape), (16, 16), 2) == TokenLayout(5, (4, 4))
    got = cl.attribute(model, x, "gradcam", target=0, layer="blocks.1.norm1")
    expected = _reference_gradcam(model, x, "blocks.1.norm1", 0, prefix=5, grid=(4, 4))
    assert float(expected.abs().max()) > 0
    torch.testing.assert_close(got.double(), expected, rtol=1e-4,
                               atol=1e-5 * float(expected.abs().max()))


def test_layout_inference_and_sequence_first():
    assert infer_layout((2, 197, 768), (224, 224), 2) == TokenLayout(1, (14, 14))
    assert infer_layout((2, 196, 768), (224, 224), 2) == TokenLayout(0, (14, 14))
    assert infer_layout((2, 1 + 8 * 16, 4), (32, 64), 2) == TokenLayout(1, (8, 16))
    layout = infer_layout((17, 2, 8), (16, 16), 2)
    assert layout == TokenLayout(1, (4, 4), sequence_first=True)
    tokens = torch.arange(17 * 2 * 8.0).view(17, 2, 8)
    grid = to_grid(tokens, layout)
    assert grid.shape == (2, 8, 4, 4)
    # patch token k (row-major) of sample 1, feature 3 is at grid[1, 3, k // 4, k % 4]
    assert grid[1, 3, 2, 1] == tokens[1 + 2 * 4 + 1, 1, 3]
    with pytest.raises(LayerError, match="do not form a patch grid"):
        infer_layout((2, 40, 8), (16, 16), 2)


def test_methods_without_meaning_on_attention_are_refused_with_a_reason():
    model = _vit()
    x = torch.randn(2, 3, 16, 16)
    # CAM needs logits = mean-pooled layer times the head's weights (GAP + linear).
    with pytest.raises(UnsupportedModelError, match="gradcam"):
        cl.attribute(model, x, "cam", layer="blocks.1")
    with pytest.raises(LayerError, match="token outputs"):
        cl.attribute(model, x, "ablationcam", layer="blocks.1")
    # Guided backprop / DeconvNet clamp the backward signal at ReLUs; a GELU network has none.
    for method in ("guided_backprop", "deconvnet"):
        with pytest.raises(UnsupportedModelError, match="no ReLU-family activation"):
            cl.attribute(model, x, method)
    # LRP has no rule for the attention's products and token bookkeeping: said in those
    # terms, with what works instead (not "Tensor.expand ... nn.ReLU instead of F.relu")
    for method in ("lrp_epsilon", "lrp"):
        with pytest.raises(UnsupportedModelError, match="LRP has no rule for attention") as info:
            cl.attribute(model, x, method)
        message = str(info.value)
        assert "'blocks.1.attn' (MultiheadAttention)" in message
        assert "products of activations" in message and "token reshapes" in message
        assert "gradcam" in message and "layer='blocks.1.norm1'" in message
        assert "integrated_gradients" in message and "occlusion" in message
        assert "Tensor.expand" not in message and "F.relu" not in message


def test_the_methods_the_lrp_refusal_suggests_exist():
    from convlens.attribution.relevance.methods import _MODEL_AGNOSTIC, _TOKEN_CAMS

    for name in (*_TOKEN_CAMS, *_MODEL_AGNOSTIC):
        assert cl.get_method(name).family != "relevance"


def test_score_cam_and_eigencam_run_on_tokens(snapshot):
    model = _vit()
    x = torch.randn(2, 3, 16, 16)
    snap = snapshot(model)
    for method in ("scorecam", "eigencam", "xgradcam", "gradcam_plus_plus"):
        out = cl.attribute(model, x, method, layer="blocks.0")
        assert out.shape == (2, 1, 4, 4) and torch.isfinite(out).all()
    snap.assert_unchanged()


def test_deeplift_runs_on_attention_but_loses_summation_to_delta():
    """Documented caveat: GELU is rescaled, softmax attention and q.k products are not."""
    model = _vit().double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    got = cl.attribute(model, x, "deeplift", target=1).double().sum(dim=(1, 2, 3))
    with torch.no_grad():
        delta = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    assert float((got - delta).abs().max()) > 1e-3 * (1 + float(delta.abs().max()))
