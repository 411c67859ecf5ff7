"""Declarative nodes: gradients vs finite differences (float64), closed forms, frameworks agree."""

import numpy as np
import pytest
import torch

from cvxlayers.declarative.torch import DeclarativeNode, EntropicOT

DT = torch.float64


def quartic(x, y):
    return ((y - x) ** 2).sum(-1) + (y ** 4).sum(-1)


def test_unconstrained_nonconvex_gradcheck_torch():
    node = DeclarativeNode(quartic, init=lambda x: torch.zeros_like(x))
    x = torch.randn(3, 4, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(node, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_equality_qp_matches_closed_form_torch():
    a = torch.randn(4, dtype=DT)
    node = DeclarativeNode(lambda x, b, y: 0.5 * ((y - x) ** 2).sum(-1),
                           solve=lambda x, b: x - ((x @ a - b) / (a @ a))[:, None] * a,
                           equality=lambda x, b, y: (y @ a - b)[:, None])
    x = torch.randn(3, 4, dtype=DT, requires_grad=True)
    b = torch.randn(3, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(node, (x, b), eps=1e-6, atol=1e-8, rtol=1e-6)
    v = torch.randn(3, 4, dtype=DT)
    gx, = torch.autograd.grad((node(x, b) * v).sum(), x)
    proj = torch.eye(4, dtype=DT) - torch.outer(a, a) / (a @ a)   # closed form Dy/Dx
    assert torch.allclose(gx, v @ proj, atol=1e-10)


def test_entropic_ot_vs_finite_differences_and_unrolled_sinkhorn():
    C = torch.rand(2, 3, 4, dtype=DT, requires_grad=True)
    a = torch.randn(2, 3, dtype=DT, requires_grad=True)
    b = torch.randn(2, 4, dtype=DT, requires_grad=True)
    ot = EntropicOT(0.5)

    def f(C, a, b):
        return ot(C, torch.softmax(a, -1), torch.softmax(b, -1))

    assert torch.autograd.gradcheck(f, (C, a, b), eps=1e-6, atol=1e-8, rtol=1e-6)

    def unrolled(C, r, c, eps=0.5, iters=3000):
        K = torch.exp(-C / eps)
        u = torch.ones_like(r)
        for _ in range(iters):
            v = c / (K.transpose(1, 2) @ u[..., None])[..., 0]
            u = r / (K @ v[..., None])[..., 0]
        return u[:, :, None] * K * v[:, None, :]

    W = torch.randn(2, 3, 4, dtype=DT)
    g1 = torch.autograd.grad((f(C, a, b) * W).sum(), (C, a, b))
    g2 = torch.autograd.grad((unrolled(C, torch.softmax(a, -1), torch.softmax(b, -1)) * W).sum(),
                             (C, a, b))
    for p, q in zip(g1, g2):
        assert torch.allclose(p, q, atol=1e-10)


def test_jax_jit_vmap_and_check_grads():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.test_util import check_grads

    from cvxlayers.declarative.jax import DeclarativeNode as JNode
    node = JNode(quartic, init=jnp.zeros_like)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)))
    check_grads(node, (x,), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-6)
    g1 = jax.grad(lambda x: node(x).sum())(x)
    g2 = jax.jit(jax.grad(lambda x: node(x).sum()))(x)
    g3 = jax.vmap(jax.grad(lambda x: node(x).sum()))(x[:, None, :])[:, 0]
    assert np.allclose(g1, g2) and np.allclose(g1, g3)
    xt = torch.tensor(np.asarray(x), requires_grad=True)
    gt, = torch.autograd.grad(DeclarativeNode(quartic, init=torch.zeros_like)(xt).sum(), xt)
    assert np.allclose(gt.numpy(), np.asarray(g1), atol=1e-9)


def test_bad_input_names_argument():
    with pytest.raises(ValueError, match="init"):
        DeclarativeNode(quartic)
    with pytest.raises(ValueError, match="method"):
        DeclarativeNode(quartic, init=torch.zeros_like, method="lu")
