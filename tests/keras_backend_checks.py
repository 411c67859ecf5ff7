"""Checks of cvxlayers.keras.CvxpyLayer on the active Keras backend.

Keras fixes its backend at import, so these run once per backend, each in its own process:
tests/test_keras_backends.py runs ``python -m pytest`` on this file with ``KERAS_BACKEND`` set
(the file name does not start with ``test_``, so the main pytest run does not collect it).
Gradients are checked in float64 against central differences along random directions.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_ENABLE_X64", "1")  # float64 on the JAX backend

import cvxpy as cp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cvxlayers import ParameterError  # noqa: E402
from cvxlayers.keras import CvxpyLayer  # noqa: E402

BACKEND = keras.backend.backend()
# SCS solved this tightly makes central differences with step 1e-6 accurate to ~1e-6.
TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 200_000}
N, M, BATCH = 3, 4, 2


def least_squares():
    """min ||A x - b||² + 0.1 ||x||²  s.t.  x >= -0.3 (some bounds active)."""
    x = cp.Variable(N, name="x")
    A, b = cp.Parameter((M, N), name="A"), cp.Parameter(M, name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)),
                         [x >= -0.3])
    return CvxpyLayer(problem, [A, b], [x])


def relu_layer():
    """x* = argmin Σ (x - q)² s.t. x >= 0 = max(q, 0); cp.square keeps a Fraction exponent,
    which saving must carry."""
    x, q = cp.Variable(N, name="x"), cp.Parameter(N, name="q")
    return CvxpyLayer(cp.Problem(cp.Minimize(cp.sum(cp.square(x - q))), [x >= 0]), [q], [x])


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, M, N)), rng.standard_normal((BATCH, M))


def numpy(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def value_and_grads(f, A, b, compiled=False):
    """f(A, b) (a scalar of the layer's outputs) and its gradients, through the backend's
    own autodiff: a GradientTape (in tf.function when compiled), jax.grad (in jax.jit when
    compiled) or torch autograd."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def run(A, b):
            with tf.GradientTape() as tape:
                tape.watch([A, b])
                loss = f(A, b)
            return loss, tape.gradient(loss, [A, b])
        run = tf.function(run) if compiled else run
        loss, grads = run(tf.constant(A), tf.constant(b))
    elif BACKEND == "jax":
        import jax
        run = jax.value_and_grad(f, argnums=(0, 1))
        loss, grads = (jax.jit(run) if compiled else run)(A, b)
    else:
        import torch
        A_t, b_t = (torch.tensor(v, requires_grad=True) for v in (A, b))
        loss = f(A_t, b_t)
        loss.backward()
        grads = A_t.grad, b_t.grad
    return float(numpy(loss)), [numpy(g) for g in grads]


def weighted_sum(layer, weights):
    def f(A, b):
        x, = layer(A, b, solver_args=TIGHT)
        return keras.ops.sum(keras.ops.convert_to_tensor(weights, x.dtype) * x)
    return f


def test_outputs_are_backend_tensors_in_the_inputs_dtype():
    layer = least_squares()
    A, b = data()
    for dtype in ("float32", "float64"):
        x, = layer(keras.ops.convert_to_tensor(A, dtype), keras.ops.convert_to_tensor(b, dtype))
        assert keras.ops.is_tensor(x) and tuple(x.shape) == (BATCH, N)
        assert keras.backend.standardize_dtype(x.dtype) == dtype


def test_forward_closed_form():
    q = np.array([[1.0, -1.0, 2.0], [-0.5, 0.25, 0.0]])
    x, = relu_layer()(q, solver_args=TIGHT)
    np.testing.assert_allclose(numpy(x), np.maximum(q, 0), atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gradient_matches_finite_differences(compiled):
    layer = least_squares()
    A, b = data()
    rng = np.random.default_rng(1)
    f = weighted_sum(layer, rng.standard_normal((BATCH, N)))
    _, (dA, db) = value_and_grads(f, A, b, compiled=compiled)
    assert np.abs(dA).max() > 1e-2 and np.abs(db).max() > 1e-2  # not vacuous
    h = 1e-6
    for _ in range(3):  # directional derivatives along random directions
        V, W = rng.standard_normal(A.shape), rng.standard_normal(b.shape)
        plus = float(numpy(f(A + h * V, b + h * W)))
        minus = float(numpy(f(A - h * V, b - h * W)))
        np.testing.assert_allclose(np.sum(dA * V) + np.sum(db * W), (plus - minus) / (2 * h),
                                   atol=1e-5, rtol=1e-5)


def test_model_fit_trains_and_saves(tmp_path):
    """model.fit (the backend's compiled or eager train step) moves the weights through the
    layer's gradient and lowers the loss; the .keras file loads back and predicts the same."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, N))
    Y = np.maximum(X @ rng.standard_normal((N, N)), 0)
    inputs = keras.Input((N,))
    outputs, = relu_layer()(keras.layers.Dense(N)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = model.evaluate(X, Y, verbose=0)
    history = model.fit(X, Y, epochs=5, batch_size=16, verbose=0)
    after = model.evaluate(X, Y, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and after < 0.9 * before

    path = str(tmp_path / f"model_{BACKEND}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # safe mode: the problem decodes without code
    assert isinstance(loaded.layers[-1], CvxpyLayer)
    np.testing.assert_allclose(numpy(loaded.predict(X, verbose=0)),
                               numpy(model.predict(X, verbose=0)), atol=1e-6)
    out = os.environ.get("CVXLAYERS_KERAS_SAVE_DIR")
    if out:  # the driver loads this file on the other backends
        model.save(os.path.join(out, f"model_{BACKEND}.keras"))
        np.save(os.path.join(out, f"pred_{BACKEND}.npy"), numpy(model.predict(X, verbose=0)))


def test_models_saved_on_other_backends_load():
    """A .keras file saved on another backend (by the driver's earlier runs) loads here."""
    folder = os.environ.get("CVXLAYERS_KERAS_LOAD_DIR")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".keras")) if folder else []
    if not names:
        pytest.skip("no models from other backends given")
    X = np.random.default_rng(0).standard_normal((32, N))
    for name in names:
        loaded = keras.models.load_model(os.path.join(folder, name))
        expected = np.load(os.path.join(folder, name.replace("model_", "pred_")[:-6] + ".npy"))
        np.testing.assert_allclose(numpy(loaded.predict(X, verbose=0)), expected, atol=1e-5)


def test_bad_shape_names_the_parameter():
    layer = least_squares()
    A, b = data()
    with pytest.raises(ParameterError, match="b"):
        layer(A, b[:, :2])


def test_config_round_trip():
    layer = relu_layer()
    config = layer.get_config()
    clone = CvxpyLayer.from_config(config)
    again = clone.get_config()
    assert again.pop("problem") and config.pop("problem")  # pickles differ in CVXPY's ids
    assert again == config
    q = np.array([0.5, -2.0, 1.5])
    np.testing.assert_allclose(numpy(clone(q, solver_args=TIGHT)[0]), np.maximum(q, 0),
                               atol=1e-6)
