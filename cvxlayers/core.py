"""The framework-free layer: validate, map parameters, solve, recover outputs — and back.

Forward, for a batch of parameters θ:

    Φ = φ(θ)            stack and broadcast (log features for DGP)
    D = Φ Mᵀ + d₀        cone data for every element, one sparse product
    (x, y) = solve(D)   a status per element: diffcp's solvers in a thread pool, or the
                        native QP backend on the whole batch at once
    out = S [x; y]      requested variables and duals (exp for DGP)

Backward applies the adjoints in reverse: Sᵀ, the solution map's adjoint (the self-dual
embedding's, or the KKT system's for QPs), M, and the adjoint of φ, summing the gradients
of unbatched parameters over the batch. The problem is compiled once per objective form:
with a linear objective for the cone solvers, with ½xᵀPx kept for QP backends — and for
SCS and Clarabel too when the objective has ``cp.quad_form(x, P)`` with a parameter P,
which is DPP only as a quadratic objective (ECOS, which has none, then refuses). The
adapters (torch, TensorFlow, JAX) only convert tensors and register these two functions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cvxlayers import gradients
from cvxlayers import status as st
from cvxlayers.backends import BACKENDS, custom, get_backend, registered_solver
from cvxlayers.backends.diffcp_backend import DERIVATIVE_MODES
from cvxlayers.backends.pool import default_jobs
from cvxlayers import distributed
from cvxlayers.distributed import chunks
from cvxlayers.compiler import check_problem, check_qp, compile_problem, needs_quad_obj
from cvxlayers.errors import ProblemError
from cvxlayers.parameters import Batch, static_output_lead, validate_batch

#: solver_args keys that choose the solver for one call rather than configure it.
_SOLVER_KEYS = ("solver", "solve_method")
#: cvxpylayers' (diffcp's) thread counts for the forward and backward passes.
_JOBS_KEYS = ("n_jobs_forward", "n_jobs_backward")


def _checked_jobs(n_jobs, name: str) -> int:
    if n_jobs is None or n_jobs == -1:
        return default_jobs()
    if not isinstance(n_jobs, (int, np.integer)) or isinstance(n_jobs, bool) or n_jobs < 1:
        raise ValueError(f"`{name}` must be a positive integer, -1 or None; received {n_jobs!r}.")
    return int(n_jobs)


def with_warm_start(solver_args, warm_start) -> dict | None:
    """A call's ``solver_args`` with the adapters' ``warm_start=`` keyword folded in, so that
    it travels wherever ``solver_args`` does (graph adapters' closures and caches);
    ``solver_args`` unchanged when the keyword is ``None`` (the layer's default)."""
    if warm_start is None:
        return solver_args
    # Checked here, at the call (at trace time under jax.jit / tf.function), not later in
    # a host callback.
    return {**_checked_solver_args(solver_args),
            "warm_start": _checked_warm_start(warm_start, "warm_start")}


def _checked_warm_start(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False; received {value!r}. It is a Python "
                        "bool, not a tensor: under jax.jit pass it as a static argument.")
    return bool(value)


@dataclass
class SolveStats:
    """What the solver reported for the last call of a layer (``layer.core.last_stats``).

    Attributes:
        solver: the backend that solved.
        statuses: ``(B,)`` per element status (see :mod:`cvxlayers.status`).
        iterations: ``(B,)`` the solver's iterations per element (for QP, the Newton steps
            each element took in the batched solve).
        warm: ``(B,)`` whether each element started from its previous solution.
    """

    solver: str
    statuses: list
    iterations: np.ndarray | None
    warm: np.ndarray | None


@dataclass
class ForwardState:
    """What backward needs from a forward call (kept only when a gradient is needed)."""

    batch: Batch
    solution: object
    outputs: list
    usable: np.ndarray
    backend: object
    n_jobs: int          # threads for the backward pass
    compiled: object


def _checked_solver_args(solver_args) -> dict:
    if solver_args is None:
        return {}
    if not isinstance(solver_args, dict):
        raise TypeError(f"`solver_args` must be a dict of solver options; received "
                        f"{type(solver_args).__name__}.")
    return solver_args


class LayerCore:
    """A compiled problem plus its solve policy; shared by every adapter.

    Args:
        problem: a DPP-compliant ``cvxpy.Problem``.
        parameters: exactly the problem's parameters, in call order.
        variables: variables and/or constraint dual variables to return, in order.
        gp: compile as a disciplined geometric program.
        solver: ``"SCS"`` (default), ``"ECOS"``, ``"CLARABEL"`` (CVXPY's names accepted), or
            ``"QP"`` for the native batched interior-point QP solver.
        n_jobs: threads solving a batch; ``None`` or ``-1`` for one per CPU.
        mode: diffcp's derivative mode: ``"lsqr"`` (default; memory and time scale with
            the problem's nonzeros), ``"dense"`` (one dense LU of the deflated embedding
            Jacobian, fast for small problems), ``"lsmr"``, or an ``"lpgd"`` mode.
        on_failure: ``"raise"`` (default) raises :class:`cvxlayers.SolverError` when any
            element fails; ``"warn"`` warns, sets the failed elements' outputs to NaN and
            their gradients to zero, and keeps the rest.
        solver_args: default solver options for every call (as in cvxpylayers 1.2); a
            call's own ``solver_args`` override them key by key.
        gradient: the derivative the backward computes: ``"implicit"`` (default, exact),
            ``"lpgd"`` (every solver) or ``"smoothed"`` (``solver="QP"``); see
            :mod:`cvxlayers.gradients`. A call overrides it with ``solver_args["gradient"]``.
        gradient_args: its arguments: ``{"tau": 1.0, "rho": 0.0}`` for LPGD,
            ``{"mu": 1e-2}`` for the smoothed gradient (defaults shown).
        warm_start: the default of the calls' ``warm_start`` (see :meth:`forward`).
        executor: where batched calls solve: ``None`` (default; this process's thread
            pool), a Dask ``distributed.Client``, ``"ray"`` (after ``ray.init``), or any
            ``concurrent.futures.Executor``; the batch is cut into chunks, each solved
            (and differentiated) on a worker (see :mod:`cvxlayers.distributed`). A call
            overrides it with ``solver_args["executor"]``.
        chunk_size: batch elements per chunk on an executor; ``None`` chooses
            ``ceil(B / (4 · workers))``. A call overrides it with
            ``solver_args["chunk_size"]``.
    """

    def __init__(self, problem, parameters: Sequence, variables: Sequence, gp: bool = False,
                 solver="SCS", n_jobs: int | None = None, mode: str = "lsqr",
                 on_failure: str = "raise", solver_args: dict | None = None,
                 gradient: str = "implicit", gradient_args: dict | None = None,
                 warm_start: bool = False, executor=None, chunk_size: int | None = None):
        if not (isinstance(gp, (bool, np.bool_)) or (isinstance(gp, int) and gp in (0, 1))):
            # cvxpylayers 1.2 takes `solver` fourth; ours is `gp`, so a positional solver
            # name lands here.
            hint = f" Pass the solver by keyword: solver={gp!r}." if isinstance(gp, str) else ""
            raise TypeError(f"`gp` must be True or False; received {gp!r}.{hint}")
        self.default_solver_args = dict(_checked_solver_args(solver_args))
        for key in _SOLVER_KEYS:  # a solver named among the defaults is the layer's solver
            if key in self.default_solver_args:
                solver = self.default_solver_args.pop(key)
        self._source = (problem, list(parameters), list(variables), bool(gp))
        check_problem(problem, bool(gp), quad_obj=True)  # DCP/DPP errors before solver errors
        # A quadratic form with a parameter matrix needs P kept, whatever the solver.
        self._needs_quad_obj = needs_quad_obj(problem, bool(gp))
        self._formulations = {}  # quad_obj -> CompiledProblem, compiled on first use
        self._backends = {}
        self._custom_solvers = {}  # name -> the solver object passed as `solver=`
        self.solver = self._solver_entry(solver)[0]
        if mode not in DERIVATIVE_MODES:
            raise ValueError(f"`mode` must be one of {DERIVATIVE_MODES}; received {mode!r}.")
        self.mode = mode
        # The mode and gradient first: they decide which formulation SCS gets (_quad_obj).
        self.gradient = gradients.check_gradient(gradient, gradient_args)
        self._backend(self.solver)  # compiles, and checks the cones, now
        self.n_jobs = _checked_jobs(n_jobs, "n_jobs")
        if on_failure not in st.ON_FAILURE_POLICIES:
            raise ValueError(f"`on_failure` must be one of {st.ON_FAILURE_POLICIES}; "
                             f"received {on_failure!r}.")
        self.on_failure = on_failure
        self.warm_start = _checked_warm_start(warm_start, "warm_start")
        self.last_stats = None  # SolveStats of the last call; one assignment, so thread-safe
        self.executor = distributed.resolve(executor)
        self.chunk_size = chunks.checked_chunk_size(chunk_size)
        # The name workers cache this layer under, and the engines' handles to their copies
        # (a scattered Dask future, a Ray ObjectRef), so the problem is shipped once.
        self.token = uuid.uuid4().hex
        self.remote_handles = {}
        self._options(None)  # the gradient against the solver, now

    @property
    def compiled(self):
        """The compiled problem for the layer's default solver."""
        return self._formulation(self._quad_obj(self._solver_entry(self.solver)[1]))

    def summary(self) -> str:
        """A one-line description for the adapters' reprs."""
        params = ", ".join(spec.name for spec in self.parameter_specs)
        outs = ", ".join(out.name for out in self.outputs)
        return f"parameters=[{params}], outputs=[{outs}], solver={self.solver}"

    def _quad_obj(self, cls, options: dict | None = None) -> bool:
        """Whether backend ``cls`` gets the problem with its objective kept as ½xᵀPx: always
        for the QP backend; for a cone solver that takes P, when the problem needs it; and
        for one that prefers it (SCS), when the objective is quadratic and the call's
        derivative (``options``, the call's solver options; None: the layer's defaults) is
        one that P allows (:func:`.cone_qp.differentiates`: not LPGD)."""
        if cls.quad_obj:
            return True
        if not self._needs_quad_obj:
            return cls.prefers_quad_obj and self._prefers_quad_obj(options)
        if not cls.accepts_quad_obj:
            takers = [repr(name) for name, b in BACKENDS.items() if b.accepts_quad_obj]
            raise ProblemError(
                f"Solver {cls.name} cannot take this problem: its objective has "
                "cp.quad_form(x, P) with a parameter P, which compiles only as a quadratic "
                f"objective ½xᵀPx, and {cls.name} takes linear objectives only. Use solver="
                f"{', '.join(takers[:-1])} or {takers[-1]}, or write the term as "
                "cp.sum_squares(L @ x) with a parameter factor L (P = LᵀL).")
        return True

    def _prefers_quad_obj(self, options) -> bool:
        """Whether the objective has a quadratic term that compiles to P (a ``sum_squares``,
        a ``quad_form`` with a constant matrix, a ``square``), the compiled P is not empty,
        the problem has constraints and no power cone (which :mod:`.cone_qp` cannot take
        with P), and the call is differentiated by :mod:`.cone_qp`."""
        from cvxlayers.backends import cone_qp

        if options is None:   # the layer's defaults: its mode, and LPGD if its gradient
            options = {"mode": self.default_solver_args.get("mode", self.mode),
                       "derivative_kwargs": self.default_solver_args.get("derivative_kwargs")}
            if self.gradient.name == "lpgd":
                options["mode"] = self.gradient.side
        if not cone_qp.differentiates(options):
            return False
        quadratic = self.__dict__.get("_quadratic_objective")
        if quadratic is None:
            quadratic = self._quadratic_objective = self._has_quadratic_objective()
        return quadratic

    def _has_quadratic_objective(self) -> bool:
        from cvxpy.reductions.dcp2cone.dcp2cone import quad_canon_methods

        problem, gp = self._source[0], self._source[3]
        if gp or not any(atom in quad_canon_methods for atom in problem.objective.atoms()):
            return False
        layout = self._formulation(True).layout
        # SCS needs a constraint row; an unconstrained least squares keeps its cone form.
        return layout.p_nnz > 0 and layout.m > 0 and not layout.cone_dict.get("p")

    def _formulation(self, quad_obj: bool):
        """The problem compiled for linear-objective cone solvers or for QP solvers."""
        compiled = self._formulations.get(quad_obj)
        if compiled is None:
            compiled = compile_problem(*self._source, quad_obj=quad_obj)
            self._formulations[quad_obj] = compiled
        return compiled

    @property
    def parameter_specs(self):
        # The same in every formulation; kept, as every call reads it (µs at small sizes).
        specs = self.__dict__.get("_parameter_specs")
        if specs is None:
            specs = self._parameter_specs = self.compiled.parameter_specs
        return specs

    @property
    def outputs(self):
        return self.compiled.solution_map.outputs

    def output_shapes(self, shapes) -> list | None:
        """Static output shapes for static parameter shapes (entries may be None), for graph
        adapters; ``None`` when unknown ranks leave them open. Raises ParameterError for
        shapes that fit no valid call."""
        lead = static_output_lead(self.parameter_specs, shapes)
        if lead is None:
            return None
        return [lead + tuple(out.shape) for out in self.outputs]

    def _solver_entry(self, solver):
        """``(name, backend class, solver object or None)`` for a solver name or a custom
        solver object (see :mod:`cvxlayers.backends.custom`); an object is kept under its
        name, so that later calls may name it."""
        if custom.is_custom(solver):
            custom.check_contract(solver)
            name = custom.solver_name(solver)
            if name.upper() in BACKENDS:
                raise ValueError(f"The custom solver {solver!r} is named {name!r}, which is a "
                                 "built-in solver's name; give it another `name` attribute.")
            self._custom_solvers[name] = solver
            return name, custom.CustomBackend, solver
        if isinstance(solver, str) and solver in self._custom_solvers:
            return solver, custom.CustomBackend, self._custom_solvers[solver]
        registered = registered_solver(solver)
        if registered is not None:
            return str(solver), custom.CustomBackend, registered
        cls = get_backend(solver)
        return cls.name, cls, None

    def _backend(self, name):
        """One backend per solver, kept: it caches what depends only on the layout."""
        key, cls, solver_object = self._solver_entry(name)
        backend = self._backends.get(key)
        if backend is None:
            quad_obj = self._quad_obj(cls)
            if cls.quad_obj:  # a QP-only backend: name the term that is not a QP
                check_qp(self._source[0], self._source[3])
            backend = cls() if solver_object is None else cls(solver_object)
            backend.check_cones(self._formulation(quad_obj).layout.cone_dict)
            self._backends[key] = backend
        return backend

    def __getstate__(self):
        # Backends are caches (holding diffcp's C++ cone objects); rebuilt on demand.
        state = dict(self.__dict__)
        state["_backends"] = {}  # their warm-start points too: a pickled layer starts cold
        state["last_stats"] = None
        state["executor"] = None      # a worker's copy solves in its own process
        state["remote_handles"] = {}
        return state

    def _options(self, solver_args):
        """The call's backend, its options in the solver's own names, and the forward and
        backward thread counts."""
        options = {**self.default_solver_args, **_checked_solver_args(solver_args)}
        options.pop("warm_start", None)  # the layer's own key: see _warm_start
        for key in ("executor", "chunk_size"):  # the layer's own keys: see _engine
            options.pop(key, None)
        name = self.solver
        for key in _SOLVER_KEYS:
            if key in options:
                name = options.pop(key)
        jobs = [_checked_jobs(options.pop(key), f"solver_args['{key}']") if key in options
                else self.n_jobs for key in _JOBS_KEYS]
        options.setdefault("mode", self.mode)
        if options["mode"] not in DERIVATIVE_MODES:
            raise ValueError(f"solver_args['mode'] must be one of {DERIVATIVE_MODES}; "
                             f"received {options['mode']!r}.")
        backend = self._backend(name)
        options = backend.gradient_options(gradients.resolve(options, self.gradient), options)
        return backend, backend.translate_options(options), jobs[0], jobs[1]

    def _warm_start(self, solver_args) -> bool:
        """Whether the call warm-starts: its ``solver_args["warm_start"]`` (where the
        adapters' keyword goes), else the defaults', else the layer's ``warm_start``."""
        options = {**self.default_solver_args, **_checked_solver_args(solver_args)}
        return _checked_warm_start(options.get("warm_start", self.warm_start), "warm_start")

    def _engine(self, solver_args):
        """The call's engine (``None``: in-process) and chunk size."""
        options = _checked_solver_args(solver_args)
        engine = (distributed.resolve(options["executor"]) if "executor" in options
                  else self.executor)
        size = (chunks.checked_chunk_size(options["chunk_size"], "solver_args['chunk_size']")
                if "chunk_size" in options else self.chunk_size)
        if engine is not None and self._warm_start(solver_args):
            raise ValueError("warm_start=True cannot be combined with an executor: each "
                             "chunk may run on a different worker from one call to the next.")
        return engine, size

    def check_differentiable(self, solver_args: dict | None = None) -> None:
        """Raises :class:`~cvxlayers.NotDifferentiableError` if the solver a call with
        ``solver_args`` uses cannot differentiate this problem (power cones); lets graph
        adapters refuse a gradient when it is traced rather than inside a host callback."""
        backend, options = self._options(solver_args)[:2]
        backend.check_differentiable(
            self._formulation(self._quad_obj(type(backend), options)).layout.cone_dict)

    def forward(self, values: Sequence, solver_args: dict | None = None,
                need_grad: bool = True, *, warn: bool = True):
        """Solves the problem for a batch of parameter values.

        Args:
            values: one array-like per parameter, shape ``shape`` or ``(B, *shape)``.
            solver_args: solver options (e.g. SCS's ``eps_abs``, ``max_iters``), plus
                ``solver`` (or ``solve_method``) to override the solver, ``mode`` the
                derivative mode, ``n_jobs_forward``/``n_jobs_backward`` the thread counts,
                cvxpylayers' generic ``eps``/``max_iters``, translated per solver, and
                ``warm_start`` (the adapters' keyword, see :func:`with_warm_start`): start
                each element from its solution of this layer's previous call when the batch
                size is unchanged (SCS and QP; ECOS and Clarabel warn once and solve
                cold). A warm solve that ends other than optimal is re-solved cold.
            need_grad: whether :meth:`backward` will be called; if not, no derivative work.
            warn: whether inaccurate or (with ``on_failure="warn"``) failed elements are
                warned about; False for a re-solve whose first solve already warned.

        Returns:
            tuple: ``(outputs, state)``: one float64 array per output, ``(B, *shape)`` when
            any parameter is batched, else ``shape``; ``state`` for :meth:`backward` (or
            None).
        """
        return self._forward(values, solver_args, need_grad, warn)

    def _forward(self, values, solver_args, need_grad, warn=True):
        """:meth:`forward`'s body, shared with :meth:`forward_residuals`."""
        batch = validate_batch(self.parameter_specs, values)
        engine, chunk_size = self._engine(solver_args)
        if engine is not None and batch.is_batched:
            return self._forward_chunks(engine, batch, solver_args, chunk_size, need_grad,
                                        warn)
        backend, options, jobs_forward, jobs_backward = self._options(solver_args)
        warm = self._warm_start(solver_args)
        compiled = self._formulation(self._quad_obj(type(backend), options))
        pmap, layout = compiled.parameter_map, compiled.layout
        if isinstance(backend, custom.CustomBackend):
            backend.prepare(layout, batch.values)  # a SolverInterface's setup / set_params
        phi = pmap.features(batch.values, batch.batched, batch.size)
        data = pmap.forward(phi)
        solution = backend.solve(layout, data, need_grad, options, jobs_forward,
                                 warm_start=warm)
        self.last_stats = SolveStats(backend.name, list(solution.statuses),
                                     solution.iterations, solution.warm)
        usable = st.apply_policy(
            solution.statuses, solution.messages, backend.name, self.on_failure,
            hint=lambda: st.scale_hint([spec.label for spec in self.parameter_specs],
                                       batch.values),
            warn=warn)
        outputs = compiled.solution_map.forward(solution.x, solution.y)
        state = (ForwardState(batch, solution, outputs, usable, backend, jobs_backward, compiled)
                 if need_grad else None)
        if not batch.is_batched:
            outputs = [out[0] for out in outputs]
        return outputs, state

    def _forward_chunks(self, engine, batch, solver_args, chunk_size, need_grad, warn):
        """The forward on an engine: chunks solved on its workers, the failure policy
        applied here to the whole batch's statuses."""
        backend = self._options(solver_args)[0]  # checks the call's options before shipping
        outputs, statuses, messages, iterations, state = chunks.forward(
            self, engine, batch, _checked_solver_args(solver_args), chunk_size, need_grad)
        self.last_stats = SolveStats(backend.name, statuses, iterations, None)
        st.apply_policy(statuses, messages, backend.name, self.on_failure,
                        hint=lambda: st.scale_hint([s.label for s in self.parameter_specs],
                                                   batch.values), warn=warn)
        return outputs, (state if need_grad else None)

    def solve_chunk(self, values, solver_args, need_grad: bool = False):
        """One chunk's solve on a worker, without the failure policy (the driver applies
        it to the whole batch): outputs ``(b, *shape)``, :class:`SolveStats`, messages,
        and the :class:`ForwardState` for :meth:`backward` when ``need_grad``."""
        batch = validate_batch(self.parameter_specs, values)
        backend, options, jobs_forward, jobs_backward = self._options(solver_args)
        compiled = self._formulation(self._quad_obj(type(backend), options))
        pmap = compiled.parameter_map
        data = pmap.forward(pmap.features(batch.values, batch.batched, batch.size))
        solution = backend.solve(compiled.layout, data, need_grad, options, jobs_forward,
                                 warm_start=False)
        outputs = compiled.solution_map.forward(solution.x, solution.y)
        stats = SolveStats(backend.name, list(solution.statuses), solution.iterations, None)
        state = None
        if need_grad:  # failed elements get zero gradients, as under on_failure="warn"
            usable = np.array([s in st.USABLE for s in solution.statuses], dtype=bool)
            state = ForwardState(batch, solution, outputs, usable, backend, jobs_backward,
                                 compiled)
        return outputs, stats, dict(solution.messages), state

    def backward(self, state: ForwardState, grads: Sequence) -> list:
        """Gradients of the parameters from gradients of the outputs.

        Args:
            state: what :meth:`forward` returned.
            grads: per output, an array shaped like that output, or ``None``.

        Returns:
            One float64 array per parameter, shaped like the value it received.

        Raises:
            NotDifferentiableError: when the problem uses a cone the backend solves but
                cannot differentiate (power cones).
        """
        if state is None:
            raise RuntimeError("backward needs the state of a forward call made with "
                               "need_grad=True.")
        if isinstance(state, chunks.DistributedState):
            return chunks.backward(self, state, grads)
        state.backend.check_differentiable(state.compiled.layout.cone_dict)
        batch = state.batch
        if not batch.is_batched:
            grads = [None if g is None else np.asarray(g)[None] for g in grads]
        compiled = state.compiled
        dx, dy = compiled.solution_map.adjoint(grads, state.outputs)
        d_data = state.backend.adjoint(compiled.layout, state.solution, dx, dy,
                                       state.usable, state.n_jobs)
        d_phi = compiled.parameter_map.adjoint(d_data)
        return compiled.parameter_map.feature_adjoint(d_phi, batch.values, batch.batched)

    def forward_keeping_state(self, values: Sequence, solver_args: dict | None = None):
        """:meth:`forward` for an adapter that cannot tell whether a gradient will follow
        (MLX's functions cannot): the :meth:`backward` state is always kept, and the diffcp
        backends defer their derivative work to the first backward
        (:class:`~cvxlayers.backends.diffcp_backend.DeferredAdjoint`), so that a call
        without gradient costs little more than its solve and one with a gradient no more
        than :meth:`forward` with ``need_grad=True``. A batched call on a distributed engine
        keeps no state (its workers would hold every call's): its backward re-solves, as
        :meth:`backward_from_residuals` does.

        Returns:
            tuple: ``(outputs, state)``, state ``None`` on an engine.
        """
        batch = validate_batch(self.parameter_specs, values)
        if batch.is_batched and self._engine(solver_args)[0] is not None:
            return self._forward(values, solver_args, need_grad=False)[0], None
        return self._forward(values, solver_args, need_grad=True)

    def forward_residuals(self, values: Sequence, solver_args: dict | None = None):
        """Outputs, and the arrays beyond ``values`` that :meth:`backward_from_residuals`
        needs, for adapters whose backward can receive arrays only (JAX's ``custom_vjp``
        residuals): the framework then decides how long a forward's state lives, exactly
        as long as a gradient can still ask for it, with no store and no capacity.

        Today the residuals are empty and the backward re-solves (one extra solve per
        backward; the cold solve is deterministic, so it linearizes at the forward's own
        solution; a warm re-solve starts from the layer's last solution, normally this
        forward's, so it is short, and it linearizes at a solution within the solver's
        tolerance of the forward's). No derivative work is done here.

        Returns:
            tuple: ``(outputs, residuals)``, outputs as :meth:`forward`'s.
        """
        outputs, _ = self._forward(values, solver_args, need_grad=False)
        return outputs, ()

    def backward_from_residuals(self, values: Sequence, residuals: tuple,
                                grad_sets: Sequence, solver_args: dict | None = None) -> list:
        """Gradients of the parameters for one or more sets of output gradients, from the
        values and residuals of :meth:`forward_residuals`, with one solve for all sets (a
        Jacobian's rows share it).

        Returns:
            One list per set in ``grad_sets``, as :meth:`backward` returns.
        """
        del residuals  # none yet: see forward_residuals
        batch = validate_batch(self.parameter_specs, values)
        engine, chunk_size = self._engine(solver_args)
        if engine is not None and batch.is_batched:  # the workers re-solve: none here
            state = chunks.make_state(engine, batch, _checked_solver_args(solver_args),
                                      chunk_size)
            return [self.backward(state, grads) for grads in grad_sets]
        # The forward already warned about this solve's statuses.
        _, state = self.forward(values, solver_args, need_grad=True, warn=False)
        return [self.backward(state, grads) for grads in grad_sets]
