"""Reliability of the TensorFlow/Keras layer: forward states live exactly as long as a
gradient can ask for them (any number of calls under one tape, nothing kept after backward,
eagerly or in a graph); saving, loading, pickling and copying; every floating dtype."""

import copy
import gc
import os
import pickle
import weakref

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cvxpy as cp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from cvxlayers import LayerCore  # noqa: E402
from cvxlayers.core import ForwardState  # noqa: E402
from cvxlayers.tensorflow import CvxpyLayer  # noqa: E402

N, M, BATCH = 3, 4, 2
TIGHT = {"eps_abs": 1e-10, "eps_rel": 1e-10, "max_iters": 200_000}


def least_squares():
    """min ||A x - b||² + 0.1 ||x||²  s.t.  x >= -0.3."""
    x = cp.Variable(N, name="x")
    A, b = cp.Parameter((M, N), name="A"), cp.Parameter(M, name="b")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + 0.1 * cp.sum_squares(x)),
                         [x >= -0.3])
    return problem, A, b, x


def make_layer(**kwargs):
    problem, A, b, x = least_squares()
    return CvxpyLayer(problem, [A, b], [x], **kwargs)


def data(batch=BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, M, N)), rng.standard_normal((batch, M))


@pytest.fixture
def state_refs(monkeypatch):
    """Weak references to every ForwardState the core returns, in order."""
    refs = []
    original = LayerCore.forward

    def spy(self, values, solver_args=None, need_grad=True, **kwargs):
        outputs, state = original(self, values, solver_args, need_grad, **kwargs)
        if state is not None:
            refs.append(weakref.ref(state))
        return outputs, state

    monkeypatch.setattr(LayerCore, "forward", spy)
    return refs


def live_states() -> int:
    gc.collect()
    return sum(type(o) is ForwardState for o in gc.get_objects())


def rollout(layer_call, A, b, steps):
    """b_{t+1} = 0.9 b_t + 0.1 A x*(A, b_t); returns sum of the last x*."""
    x = None
    for _ in range(steps):
        x, = layer_call(A, b)
        b = 0.9 * b + 0.1 * (A @ x[..., None])[..., 0]
    return x


def test_200_calls_under_one_tape_match_torch():
    torch = pytest.importorskip("torch")
    from cvxlayers.torch import CvxpyLayer as TorchLayer

    problem, A_p, b_p, x_p = least_squares()
    layer = CvxpyLayer(problem, [A_p, b_p], [x_p], solver="CLARABEL")
    A_val, b_val = data(seed=1)
    A, b = tf.constant(A_val), tf.constant(b_val)
    with tf.GradientTape() as tape:
        tape.watch([A, b])
        loss = tf.reduce_sum(rollout(layer, A, b, 200))
    dA, db = tape.gradient(loss, [A, b])

    torch_layer = TorchLayer(problem, [A_p, b_p], [x_p], solver="CLARABEL")
    A_t = torch.tensor(A_val, requires_grad=True)
    b_t = torch.tensor(b_val, requires_grad=True)
    rollout(torch_layer, A_t, b_t, 200).sum().backward()
    np.testing.assert_allclose(dA.numpy(), A_t.grad.numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(db.numpy(), b_t.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_eager_states_die_with_the_tape(state_refs):
    layer = make_layer()
    A, b = (tf.constant(v) for v in data())
    with tf.GradientTape() as tape:
        tape.watch(b)
        loss = tf.reduce_sum(layer(A, b)[0]) + tf.reduce_sum(layer(A, 2 * b)[0])
    assert len(state_refs) == 2
    tape.gradient(loss, b)
    gc.collect()
    assert all(ref() is None for ref in state_refs)  # a non-persistent tape is done

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(b)
        loss = tf.reduce_sum(layer(A, b)[0])
    first, second = tape.gradient(loss, b), tape.gradient(loss, b)
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    gc.collect()
    assert state_refs[-1]() is not None  # a persistent tape may still ask
    del tape
    gc.collect()
    assert state_refs[-1]() is None
    assert live_states() == 0


def test_no_tape_keeps_nothing(state_refs):
    layer = make_layer()
    A, b = (tf.constant(v) for v in data())
    for _ in range(3):
        layer(A, b)
    assert state_refs == [] and live_states() == 0


def test_graph_training_steps_do_not_accumulate(state_refs):
    layer = make_layer()
    A_val, b_val = data()
    A = tf.Variable(A_val)
    b = tf.constant(b_val)
    optimizer = keras.optimizers.SGD(0.01)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(A, b)[0] ** 2)
        optimizer.apply_gradients([(tape.gradient(loss, A), A)])
        return loss

    losses = [float(step()) for _ in range(80)]
    assert losses[-1] < losses[0]
    assert len(state_refs) == 80           # one derivative state per gradient, in backward
    assert live_states() == 0              # none outlives its backward op

    predict = tf.function(lambda A, b: layer(A, b)[0])
    for _ in range(70):                    # more calls than the old 64-state store held
        predict(A, b)
    assert len(state_refs) == 80           # a graph forward does no derivative work
    assert live_states() == 0


def test_graph_gradient_matches_eager_after_many_calls():
    layer = make_layer()
    A_val, b_val = data()
    A, b = tf.constant(A_val), tf.constant(b_val)
    solve = tf.function(lambda A, b: layer(A, b)[0])
    with tf.GradientTape() as tape:        # the graph's forwards, gradient outside it
        tape.watch(b)
        loss = tf.add_n([tf.reduce_sum(solve(A, b + 0.01 * i)) for i in range(70)])
    graph = tape.gradient(loss, b)
    with tf.GradientTape() as tape:
        tape.watch(b)
        loss = tf.add_n([tf.reduce_sum(layer(A, b + 0.01 * i)[0]) for i in range(70)])
    np.testing.assert_allclose(graph.numpy(), tape.gradient(loss, b).numpy(), atol=1e-10)


def functional_model():
    problem, A, b, x = least_squares()
    A_fixed = data(batch=1, seed=3)[0][0]
    inputs = keras.Input((M,), dtype="float64")
    rhs = keras.layers.Dense(M, dtype="float64")(inputs)
    x_star, = CvxpyLayer(problem, [A, b], [x], solver="CLARABEL", mode="dense",
                         solver_args={"max_iter": 500}, name="opt")(tf.constant(A_fixed), rhs)
    return keras.Model(inputs, x_star)


def outputs_and_gradient(model, inputs):
    inputs = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = model(inputs)
        loss = tf.reduce_sum(out ** 2)
    return out.numpy(), tape.gradient(loss, inputs).numpy()


def test_model_save_load_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = functional_model()
    inputs = np.random.default_rng(7).standard_normal((5, M))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)   # safe mode, Keras's default
    layer = loaded.get_layer("opt")
    assert isinstance(layer, CvxpyLayer)
    assert layer.core.solver == "CLARABEL" and layer.core.mode == "dense"
    assert layer.core.default_solver_args == {"max_iter": 500}
    for got, want in zip(outputs_and_gradient(loaded, inputs),
                         outputs_and_gradient(model, inputs)):
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_problem_decoding_refuses_anything_but_cvxpy_building_blocks():
    """A crafted config cannot make loading run code: the unpickler resolves only CVXPY's,
    NumPy's and SciPy's building blocks."""
    import base64
    import pickle

    from cvxlayers._serialize import decode_problem

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    crafted = base64.b64encode(pickle.dumps((1, Exploit(), [], []))).decode("ascii")
    with pytest.raises(ValueError, match="builtins.print is not part of a CVXPY problem"):
        decode_problem(crafted)
    config = make_layer().get_config()
    assert decode_problem(config["problem"])[0] is not None   # the real thing decodes


def test_config_keeps_parameters_inside_the_problem():
    layer = make_layer(solver="ECOS", n_jobs=2, on_failure="warn")
    config = layer.get_config()
    assert isinstance(config["problem"], str)
    clone = CvxpyLayer.from_config(config)
    problem, parameters, variables, _ = clone.core._source
    ids = {id(p) for p in problem.parameters()}
    assert all(id(p) in ids for p in parameters)
    assert {id(v) for v in variables} <= {id(v) for v in problem.variables()}
    assert (clone.core.solver, clone.core.n_jobs, clone.core.on_failure) == ("ECOS", 2, "warn")


def pickled(layer):
    return pickle.loads(pickle.dumps(layer))


@pytest.mark.parametrize("clone", [pickled, copy.deepcopy], ids=["pickle", "deepcopy"])
def test_pickle_and_deepcopy_before_and_after_use(clone):
    layer = make_layer()
    A, b = (tf.constant(v) for v in data())
    fresh = clone(layer)                     # before any call
    want, = layer(A, b, solver_args=TIGHT)
    used = clone(layer)                      # after a call
    for other in (fresh, used):
        assert isinstance(other, CvxpyLayer) and other is not layer
        with tf.GradientTape() as tape:
            tape.watch(b)
            got, = other(A, b, solver_args=TIGHT)
            loss = tf.reduce_sum(got)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-9)
        assert tape.gradient(loss, b) is not None


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_low_precision_in_low_precision_out(dtype, graph):
    layer = make_layer()
    A_val, b_val = data()
    A, b = tf.constant(A_val, dtype=dtype), tf.constant(b_val, dtype=dtype)

    def run(A, b):
        with tf.GradientTape() as tape:
            tape.watch([A, b])
            x, = layer(A, b)
            loss = tf.reduce_sum(x)
        return (x, *tape.gradient(loss, [A, b]))

    x, dA, db = (tf.function(run) if graph else run)(A, b)
    assert x.dtype == dtype and dA.dtype == dtype and db.dtype == dtype
    assert x.shape == (BATCH, N) and dA.shape == (BATCH, M, N)
    ref, = layer(tf.cast(A, tf.float64), tf.cast(b, tf.float64))
    np.testing.assert_allclose(tf.cast(x, tf.float64).numpy(), ref.numpy(), atol=0.05)


def test_state_capacity_is_deprecated():
    with pytest.warns(DeprecationWarning, match="state_capacity"):
        make_layer(state_capacity=8)
