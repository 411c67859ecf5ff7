"""The TensorFlow/Keras layer: eager, tf.function and model.fit; dtypes, gradients (finite
differences and the PyTorch layer), broadcasting, errors, and the no-tape path."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cvxpy as cp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import cvxlayers  # noqa: E402
from cvxlayers.tensorflow import CvxpyLayer  # noqa: E402

# SCS solved this tightly makes central differences with step 1e-6 accurate to ~1e-6.
TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 200_000}
N, M, BATCH = 3, 4, 3


def least_squares():
    """min ||A x - b||² + 0.1 ||x||²  s.t.  x >= -0.3 (some bounds active)."""
    x = cp.Variable(N, name="x")
    A, b = cp.Parameter((M, N), name="A"), cp.Parameter(M, name="b")
    bound = x >= -0.3
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)),
                         [bound])
    return problem, A, b, x, bound


def make_layer(**kwargs):
    problem, A, b, x, _ = least_squares()
    return CvxpyLayer(problem, [A, b], [x], **kwargs)


def data(batch=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    lead = () if batch is None else (batch,)
    return rng.standard_normal(lead + (M, N)), rng.standard_normal(lead + (M,))


def grads_of(layer, A, b, weights, **call):
    """The output, and the gradients of sum(weights * x*) w.r.t. A and b (eager tape)."""
    A, b = tf.constant(A), tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch([A, b])
        x, = layer(A, b, **call)
        loss = tf.reduce_sum(tf.constant(weights, x.dtype) * x)
    dA, db = tape.gradient(loss, [A, b])
    return x.numpy(), dA.numpy(), db.numpy()


def test_forward_matches_cvxpy():
    problem, A, b, x, _ = least_squares()
    layer = CvxpyLayer(problem, [A, b], [x])
    A_val, b_val = data()
    out, = layer(tf.constant(A_val), tf.constant(b_val), solver_args=TIGHT)
    assert out.shape == (BATCH, N)
    for i in range(BATCH):
        A.value, b.value = A_val[i], b_val[i]
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        np.testing.assert_allclose(out[i].numpy(), x.value, atol=1e-7)


def test_unbatched_call_has_no_batch_dimension():
    layer = make_layer()
    A_val, b_val = data(batch=None)
    out, = layer(tf.constant(A_val), tf.constant(b_val))
    assert out.shape == (N,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_follows_inputs(dtype):
    layer = make_layer()
    A = tf.constant(data()[0], dtype=dtype)
    b = tf.constant(data()[1], dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch([A, b])
        out, = layer(A, b)
        loss = tf.reduce_sum(out)
    assert out.dtype == dtype
    dA, db = tape.gradient(loss, [A, b])
    assert dA.dtype == dtype and db.dtype == dtype


def test_mixed_and_non_float_dtypes():
    layer = make_layer()
    A_val, b_val = data()
    mixed, = layer(tf.constant(A_val, tf.float32), tf.constant(b_val, tf.float64))
    assert mixed.dtype == tf.float64
    ints, = layer(tf.constant(np.round(A_val), tf.int32), tf.constant(np.round(b_val), tf.int64))
    assert ints.dtype == keras.config.floatx()
    arrays, = layer(A_val, b_val.tolist())  # NumPy arrays and lists are converted
    np.testing.assert_allclose(arrays.numpy(), mixed.numpy(), atol=1e-5)


def test_gradient_matches_finite_differences():
    """tf.test.compute_gradient (central differences) in float64, tight SCS."""
    layer = make_layer()
    A_val, b_val = data(batch=2)

    def f(A, b):
        return layer(A, b, solver_args=TIGHT)[0]

    theoretical, numerical = tf.test.compute_gradient(
        f, [tf.constant(A_val), tf.constant(b_val)], delta=1e-6)
    for t, n in zip(theoretical, numerical):
        assert np.abs(t).max() > 1e-2  # the check is not vacuous
        np.testing.assert_allclose(t, n, atol=1e-5)


def test_gradient_matches_torch():
    torch = pytest.importorskip("torch")
    from cvxlayers.torch import CvxpyLayer as TorchLayer

    problem, A, b, x, _ = least_squares()
    A_val, b_val = data()
    weights = np.random.default_rng(1).standard_normal((BATCH, N))
    out_tf, dA_tf, db_tf = grads_of(CvxpyLayer(problem, [A, b], [x]), A_val, b_val, weights,
                                    solver_args=TIGHT)
    A_t, b_t = (torch.tensor(v, requires_grad=True) for v in (A_val, b_val))
    out_t, = TorchLayer(problem, [A, b], [x])(A_t, b_t, solver_args=TIGHT)
    (torch.tensor(weights) * out_t).sum().backward()
    np.testing.assert_allclose(out_tf, out_t.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(dA_tf, A_t.grad.numpy(), atol=1e-8)
    np.testing.assert_allclose(db_tf, b_t.grad.numpy(), atol=1e-8)


def test_graph_mode_matches_eager():
    layer = make_layer()
    A_val, b_val = data()
    weights = np.random.default_rng(1).standard_normal((BATCH, N))

    @tf.function(input_signature=[tf.TensorSpec((None, M, N), tf.float64),
                                  tf.TensorSpec((None, M), tf.float64)])
    def step(A, b):
        with tf.GradientTape() as tape:
            tape.watch([A, b])
            x, = layer(A, b)
            assert x.shape.as_list() == [None, N]  # static shape, batch size unknown
            loss = tf.reduce_sum(tf.constant(weights) * x)
        return (x, *tape.gradient(loss, [A, b]))

    graph = [t.numpy() for t in step(tf.constant(A_val), tf.constant(b_val))]
    eager = grads_of(layer, A_val, b_val, weights)
    for g, e in zip(graph, eager):
        np.testing.assert_allclose(g, e, atol=1e-10)


def test_tape_outside_tf_function():
    """The token crosses a tf.function boundary: forward in the graph, gradient outside."""
    layer = make_layer()
    A_val, b_val = data()
    A, b = tf.constant(A_val), tf.constant(b_val)
    solve = tf.function(lambda A, b: layer(A, b)[0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(b)
        loss = tf.reduce_sum(solve(A, b) ** 2)
    first, second = tape.gradient(loss, b), tape.gradient(loss, b)  # state is kept
    with tf.GradientTape() as tape:
        tape.watch(b)
        eager = tape.gradient(tf.reduce_sum(layer(A, b)[0] ** 2), b)
    np.testing.assert_allclose(first.numpy(), eager.numpy(), atol=1e-10)
    np.testing.assert_allclose(second.numpy(), first.numpy())


def test_broadcast_gradient_is_summed_over_batch():
    layer = make_layer()
    A_val, _ = data(batch=None)
    _, b_val = data()
    weights = np.random.default_rng(1).standard_normal((BATCH, N))
    out, dA, db = grads_of(layer, A_val, b_val, weights, solver_args=TIGHT)
    assert dA.shape == (M, N) and db.shape == (BATCH, M)
    per_element = [grads_of(layer, A_val, b_val[i], weights[i], solver_args=TIGHT)
                   for i in range(BATCH)]
    np.testing.assert_allclose(out, np.stack([p[0] for p in per_element]), atol=1e-9)
    np.testing.assert_allclose(dA, sum(p[1] for p in per_element), atol=1e-8)
    np.testing.assert_allclose(db, np.stack([p[2] for p in per_element]), atol=1e-8)


def test_several_outputs_and_an_unused_one():
    """A dual variable as a second output; a loss of one output only gets the same gradient
    as a layer with that output alone (the other's upstream gradient is None or zero)."""
    problem, A, b, x, bound = least_squares()
    both = CvxpyLayer(problem, [A, b], [x, bound.dual_variables[0]])
    only_x = CvxpyLayer(problem, [A, b], [x])
    A_val, b_val = data()
    A_t, b_t = tf.constant(A_val), tf.constant(b_val)
    with tf.GradientTape() as tape:
        tape.watch(b_t)
        x_star, dual = both(A_t, b_t)
        loss = tf.reduce_sum(x_star ** 2)
    assert dual.shape == (BATCH, N)
    assert np.all(dual.numpy() >= -1e-6) and np.any(dual.numpy() > 1e-3)  # some bounds active
    _, _, db_ref = grads_of(only_x, A_val, b_val, 2 * x_star.numpy())
    np.testing.assert_allclose(tape.gradient(loss, b_t).numpy(), db_ref, atol=1e-9)

    @tf.function
    def dual_grad(A, b):
        with tf.GradientTape() as tape:
            tape.watch(b)
            loss = tf.reduce_sum(both(A, b)[1])
        return tape.gradient(loss, b)

    assert np.all(np.isfinite(dual_grad(A_t, b_t).numpy()))


def test_model_fit_subclassed():
    keras.utils.set_random_seed(0)
    problem, A, b, x, _ = least_squares()
    A_true, _ = data(batch=None, seed=3)

    class Model(keras.Model):
        def __init__(self):
            super().__init__()
            self.A = self.add_weight(shape=(M, N), initializer="random_normal")
            self.solve = CvxpyLayer(problem, [A, b], [x])

        def call(self, b_batch):
            return self.solve(self.A, b_batch)[0]

    rng = np.random.default_rng(4)
    b_train = rng.standard_normal((32, M)).astype("float32")
    x_train, = CvxpyLayer(problem, [A, b], [x])(A_true.astype("float32"), b_train)
    model = Model()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    A_before = model.A.numpy().copy()
    history = model.fit(b_train, x_train.numpy(), epochs=4, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert not np.allclose(model.A.numpy(), A_before)
    assert model.predict(b_train[:2], verbose=0).shape == (2, N)


def test_model_fit_functional_float64():
    keras.utils.set_random_seed(0)
    problem, A, b, x, _ = least_squares()
    A_fixed, _ = data(batch=None)
    inputs = keras.Input((M,), dtype="float64")
    rhs = keras.layers.Dense(M, dtype="float64")(inputs)
    x_star, = CvxpyLayer(problem, [A, b], [x])(tf.constant(A_fixed), rhs)
    assert tuple(x_star.shape) == (None, N) and x_star.dtype == "float64"
    model = keras.Model(inputs, x_star)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    rng = np.random.default_rng(5)
    weights_before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(rng.standard_normal((16, M)), 0.1 * rng.standard_normal((16, N)),
                        epochs=3, batch_size=8, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert any(not np.allclose(w.numpy(), w0)
               for w, w0 in zip(model.trainable_weights, weights_before))


def test_bad_shape_names_the_parameter():
    layer = make_layer()
    A_val, b_val = data()
    with pytest.raises(cvxlayers.ParameterError,
                       match=r"`A` \(position 0\) expects shape \(4, 3\) or \(batch, \*\(4, 3\)\); "
                             r"received \(3, 3, 3\)"):
        layer(tf.constant(A_val[:, :3]), tf.constant(b_val))


def test_nan_names_the_parameter():
    layer = make_layer()
    A_val, b_val = data()
    b_val[1, 2] = np.nan
    with pytest.raises(cvxlayers.ParameterError, match=r"`b` \(position 1\) contains NaN"):
        layer(tf.constant(A_val), tf.constant(b_val))
    with pytest.raises(cvxlayers.ParameterError, match=r"`b` \(position 1\) contains NaN"):
        with tf.GradientTape() as tape:  # the derivative path raises the same error
            b = tf.constant(b_val)
            tape.watch(b)
            layer(tf.constant(A_val), b)


def test_unconvertible_value_names_the_parameter():
    layer = make_layer()
    A_val, _ = data(batch=None)
    with pytest.raises(cvxlayers.ParameterTypeError, match=r"`b` \(position 1\)"):
        layer(tf.constant(A_val), [[1.0, 2.0], [3.0]])  # ragged


def test_errors_in_graph_mode_show_the_core_message():
    layer = make_layer()
    A_val, b_val = data()
    solve = tf.function(lambda A, b: layer(A, b)[0])
    # Shapes are known when the graph is traced: the core's own error, at trace time
    # (autograph re-raises it as a StagingError that carries the message).
    with pytest.raises(Exception, match=r"`A` \(position 0\) expects shape \(4, 3\)") as info:
        solve(tf.constant(A_val[:, :3]), tf.constant(b_val))
    assert not isinstance(info.value, tf.errors.OpError)  # raised while tracing, not running
    # Values are known only when the graph runs: TensorFlow's error carries the message.
    b_val[0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`b` \(position 1\) contains NaN"):
        solve(tf.constant(A_val), tf.constant(b_val))


def test_solver_error_reaches_the_user_unchanged():
    y, c = cp.Variable(1), cp.Parameter(1, name="c")
    infeasible = cp.Problem(cp.Minimize(y[0]), [y >= c, y <= c - 1])
    layer = CvxpyLayer(infeasible, [c], [y], solver="CLARABEL")
    with pytest.raises(cvxlayers.SolverError, match="infeasible") as info:
        layer(tf.ones((2, 1)))
    assert info.value.statuses == ["infeasible", "infeasible"]
    assert info.value.failed == [0, 1]


def test_no_tape_no_derivative_work(need_grad_calls):
    seen = need_grad_calls
    layer = make_layer()
    A, b = (tf.constant(v) for v in data())
    layer(A, b)                                   # no tape
    with tf.GradientTape() as tape:
        layer(A, b)                               # a tape that watches nothing here
        tape.watch(b)
        out, = layer(A, b)                        # a tape that watches b
        loss = tf.reduce_sum(out)
    assert tape.gradient(loss, b) is not None
    tf.function(lambda A, b: layer(A, b))(A, b)   # graph mode: the backward op re-solves
    assert seen == [False, False, True, False]


def test_zoo_matches_torch():
    """Every zoo case with every solver that supports it: outputs and gradients of a random
    projection equal the PyTorch layer's."""
    torch = pytest.importorskip("torch")
    zoo = pytest.importorskip("zoo")
    from cvxlayers.torch import CvxpyLayer as TorchLayer

    cases = [(name, solver) for name, make in zoo.ZOO.items() for solver in make().solvers]
    for name, solver in cases:
        case = zoo.ZOO[name]()
        rng = np.random.default_rng(6)
        values = case.sample(rng, 2)
        layers = [cls(case.problem, case.parameters, case.variables, gp=case.gp, solver=solver)
                  for cls in (CvxpyLayer, TorchLayer)]
        call = {"solver_args": zoo.TIGHT[solver]}
        tf_params = [tf.constant(v) for v in values]
        with tf.GradientTape() as tape:
            tape.watch(tf_params)
            tf_outs = layers[0](*tf_params, **call)
            weights = [rng.standard_normal(o.shape) for o in tf_outs]
            loss = sum(tf.reduce_sum(w * o) for w, o in zip(weights, tf_outs))
        tf_grads = tape.gradient(loss, tf_params)
        torch_params = [torch.tensor(v, requires_grad=True) for v in values]
        torch_outs = layers[1](*torch_params, **call)
        sum((torch.tensor(w) * o).sum() for w, o in zip(weights, torch_outs)).backward()
        for a, t in zip(tf_outs, torch_outs):
            np.testing.assert_allclose(a.numpy(), t.detach().numpy(), atol=1e-9,
                                       err_msg=f"{name} {solver}")
        for a, t in zip(tf_grads, torch_params):
            np.testing.assert_allclose(a.numpy(), t.grad.numpy(), atol=1e-8,
                                       err_msg=f"{name} {solver}")
