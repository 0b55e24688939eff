"""Free runs, valid prediction times, Lyapunov exponents, attractor statistics and
paired comparisons."""

import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import tadiffeq.dynamics as tdd
from tadiffeq.data import generate_lorenz63

from .config import AUTHORS, LorenzConfig
from .model import make_steppers
from .training import step_summary


# The version of what `evaluate` computes: a saved result of another version is
# evaluated again (from the checkpoint) rather than read back without a metric.
# 2: the equilibria and the long runs from training points; 3: the equilibria's basins
# (2026-12-06).
METRICS_VERSION = 3

one_step = eqx.filter_jit(lambda step, f, x: step(f, x))
rollout = eqx.filter_jit(tdd.rollout)


@eqx.filter_jit
def lyapunov(step, f, x0, n_steps: int, transient: int, dt: float):
    """The Lyapunov spectra `(orbits, 3)` of the learned map (one inference step)
    from each initial point of `x0` `(orbits, 3)`."""
    return jax.vmap(
        lambda x: tdd.lyapunov_spectrum(
            lambda y: step(f, y[None])[0][0], x, n_steps, dt, transient=transient
        )
    )(x0)


def equilibrium_summary(field, dt: float) -> dict:
    """The learned field's counterparts of the true equilibria (Newton from C+, C-
    and the origin): each point, its distance to the true one (state units), whether
    Newton converged, and the largest real part
    and imaginary part of the field's eigenvalues there, per time unit (a negative
    `growth` attracts; the truth: 0.094 and 10.19 at C+-, 11.83 at the origin).
    `evaluate` adds where the long runs pass each point and, for an attracting one,
    its `capture_fractions`."""
    starts = tdd.Lorenz63().equilibria().astype(jnp.result_type(float))
    eq = tdd.equilibria(field, starts)
    ev = np.linalg.eigvals(np.asarray(eq.jacobians)) / dt
    return {
        name: dict(
            point=np.asarray(eq.points[i]).tolist(),
            distance=float(jnp.linalg.norm(eq.points[i] - starts[i])),
            converged=bool(eq.converged[i]),
            growth=float(ev[i].real.max()),
            rotation=float(np.abs(ev[i].imag).max()),
        )
        for i, name in enumerate(("C+", "C-", "origin"))
    }


def capture_fractions(step, f, point, radii, *, n_steps: int = 3000, n_dirs: int = 32):
    """How far an equilibrium `point` `(3,)` of the learned map attracts: for each
    radius r, the fraction of `n_dirs` starts at distance r (fixed random directions)
    whose free run ends, after `n_steps` steps, within r / 2 of the point."""
    u = np.random.default_rng(0).standard_normal((n_dirs, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    out = {}
    for r in radii:
        traj, _ = rollout(step, f, jnp.asarray(point + r * u), n_steps)
        d = np.linalg.norm(np.asarray(traj[:, -1]) - point, axis=-1)
        out[f"{r:.2f}"] = float(np.mean(np.isfinite(d) & (d < r / 2)))
    return out


def outside_fraction(runs, ranges) -> float:
    """The fraction of the points of `runs` `(..., 3)` outside the box `ranges`
    `(3, 2)` (the true attractor's extent +-10%): near 1 for runs that blew up."""
    inside = np.all((runs >= ranges[:, 0]) & (runs <= ranges[:, 1]), axis=-1)
    return float(np.mean(~inside))


def spread(values) -> dict:
    """Median, min and max of per-run values, a non-finite one (an orbit or run that
    diverged) counted as +inf, and how many were non-finite (`diverged`)."""
    v = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(v)
    v = np.where(bad, np.inf, v)
    return dict(
        median=float(np.median(v)), min=float(np.min(v)), max=float(np.max(v)),
        diverged=int(bad.sum()),
    )  # fmt: skip


def evaluate(cfg: LorenzConfig, mlp, train_x, test_x, refs, log):
    """Every metric of one trained model (see the module docstring)."""
    _, step = make_steppers(cfg)
    f = mlp
    dt = cfg.dt
    t0 = time.perf_counter()
    row = {}
    # One-step-ahead test error, each transition from the true previous point.
    pred, info = one_step(step, f, jnp.asarray(test_x[:-1]))
    row["test_mse"] = float(jnp.mean((pred - test_x[1:]) ** 2))
    row["inference_one_step"] = step_summary(info)
    # Vector-field error on the test points against the rescaled true field.
    true_f = tdd.Lorenz63(time_scale=dt)(jnp.asarray(test_x))
    row["field_rel_error"] = float(
        jnp.sqrt(jnp.mean((f(jnp.asarray(test_x)) - true_f) ** 2))
        / jnp.sqrt(jnp.mean(true_f**2))
    )
    # Free runs from the test initial conditions against the exact flow.
    traj, run_info = rollout(step, f, jnp.asarray(refs["ics"]), cfg.horizon)
    traj = np.asarray(traj)
    vpt = np.asarray(
        tdd.valid_prediction_time(
            traj, refs["truth"], dt=dt, threshold=cfg.threshold, scale=refs["scale"]
        )
    )
    row["vpt"] = dict(
        mean=float(vpt.mean()), median=float(np.median(vpt)), min=float(vpt.min()),
        max=float(vpt.max()), censored=float(np.mean(vpt >= refs["vpt_max"] - 1e-9)),
    )  # fmt: skip
    row["vpt_all"] = vpt.tolist()
    vpt_data = np.asarray(
        tdd.valid_prediction_time(
            traj, refs["data_segments"], dt=dt, threshold=cfg.threshold,
            scale=refs["scale"],
        )
    )  # fmt: skip
    row["vpt_vs_data"] = dict(
        mean=float(vpt_data.mean()), median=float(np.median(vpt_data))
    )
    log(f"  [{cfg.solver}] one-step and free runs: {time.perf_counter() - t0:.0f} s")
    row["equilibria"] = equilibrium_summary(f, dt)
    row["metrics_version"] = METRICS_VERSION
    row["inference_free_run"] = step_summary(
        jax.tree.map(lambda a: a.reshape(-1), run_info)
    )
    # Lyapunov spectra of the learned one-step map (the inference solver), one per
    # long-run initial point.
    spectra = np.asarray(
        lyapunov(
            step, f, jnp.asarray(refs["long_truth"][:, 0]), cfg.lyap_steps,
            max(1, cfg.lyap_steps // 10), dt,
        )
    )  # fmt: skip
    # Each exponent's median over the orbits (a diverged orbit counting as +inf), so
    # not one orbit's spectrum: its sum need not be the trace of the dynamics.
    row["lyapunov_spectrum"] = np.median(
        np.where(np.isfinite(spectra), spectra, np.inf), axis=0
    ).tolist()
    row["lyapunov"] = row["lyapunov_spectrum"][0]
    row["lyapunov_orbits"] = spread(spectra[:, 0])
    row["lyapunov_orbits"]["all"] = spectra[:, 0].tolist()
    log(f"  [{cfg.solver}] + Lyapunov spectra: {time.perf_counter() - t0:.0f} s")
    # The long runs' attractor statistics, pooled, and each run's.
    long_runs, long_info = rollout(
        step, f, jnp.asarray(refs["long_truth"][:, 0]), cfg.long_steps
    )
    long_runs = np.asarray(long_runs[:, refs["burn_in"] :])
    stats = tdd.attractor_statistics(long_runs, ranges=refs["ranges"])
    per_run_tv = [
        np.mean(
            tdd.histogram_distance(
                tdd.attractor_statistics(run, ranges=refs["ranges"]), refs["stats"]
            )
        )
        for run in long_runs
    ]
    row["attractor"] = dict(
        mean=np.asarray(stats.mean).tolist(),
        std=np.asarray(stats.std).tolist(),
        tv=np.asarray(tdd.histogram_distance(stats, refs["stats"])).tolist(),
        tv_per_run=spread(per_run_tv),
        finite=stats.finite,
        outside_fraction=outside_fraction(long_runs, refs["ranges"]),
    )
    row["inference_long_run"] = step_summary(
        jax.tree.map(lambda a: a.reshape(-1), long_info)
    )
    # Where the long runs pass the equilibria, and, for one that attracts, the share
    # of starts it captures at distances 1, 2, 4 and at that closest approach.
    # (None where every run diverged)
    for eq in row["equilibria"].values():
        point = np.asarray(eq["point"])
        d = np.linalg.norm(long_runs - point, axis=-1)
        closest = float(d[np.isfinite(d)].min()) if np.isfinite(d).any() else None
        eq["closest_approach"] = closest
        if eq["growth"] < 0:
            radii = (1.0, 2.0, 4.0) + (() if closest is None else (closest,))
            eq["capture"] = capture_fractions(step, f, point, radii)
    # The same from training points, against the training split's own histogram: a
    # long-run check that needs no data beyond the training split (for choosing
    # between trained models without the test split).
    train_runs, _ = rollout(step, f, jnp.asarray(refs["train_starts"]), cfg.long_steps)
    train_runs = np.asarray(train_runs[:, refs["burn_in"] :])
    row["attractor_train"] = dict(
        tv=float(
            np.mean(
                tdd.histogram_distance(
                    tdd.attractor_statistics(train_runs, ranges=refs["ranges"]),
                    refs["train_stats"],
                )
            )
        ),
        outside_fraction=outside_fraction(train_runs, refs["ranges"]),
    )
    log(f"  [{cfg.solver}] + long run: {time.perf_counter() - t0:.0f} s")
    arrays = dict(traj=traj, long_run=long_runs[0], stats=stats)
    return row, arrays


def references(cfg: LorenzConfig, train_x, test_x, cache: pathlib.Path):
    """The exact flow from the test initial conditions, `cfg.long_runs` long exact
    runs and their pooled statistics, and the true system's Lyapunov spectrum (the
    median over the long runs' initial points); the starts of the long runs from
    training points and the training split's statistics."""
    n_test = len(test_x)
    if cfg.horizon + 1 > n_test:
        raise ValueError(f"--horizon must be < {n_test}, got {cfg.horizon}.")
    stride = max(1, (n_test - 1 - cfg.horizon) // max(1, cfg.num_ics - 1))
    idx = np.arange(cfg.num_ics) * stride
    if idx[-1] + cfg.horizon >= n_test:
        raise ValueError(
            f"{cfg.num_ics} initial conditions with --horizon {cfg.horizon} do not "
            f"fit in {n_test} test points."
        )
    ics = test_x[idx]
    if cfg.data == "generated":  # the test split is already the exact flow
        truth = np.stack([test_x[i : i + cfg.horizon + 1] for i in idx])
    else:
        truth = generate_lorenz63(cfg.horizon + 1, cfg.dt, ics, cache_dir=cache)
    data_segments = np.stack([test_x[i : i + cfg.horizon + 1] for i in idx])
    if not 1 <= cfg.long_runs <= n_test:
        raise ValueError(
            f"--long-runs must be between 1 and the {n_test} test points, got "
            f"{cfg.long_runs}."
        )
    # The long runs start at test points 0, n/K, 2n/K, ... (the first is test point 0).
    long_idx = np.arange(cfg.long_runs) * (n_test // cfg.long_runs)
    # (the first alone: a batch is solved as one system, whose steps differ)
    long_truth = np.stack(
        [generate_lorenz63(cfg.long_steps + 1, cfg.dt, test_x[0], cache_dir=cache)]
        + (
            list(
                generate_lorenz63(
                    cfg.long_steps + 1, cfg.dt, test_x[long_idx[1:]], cache_dir=cache
                ).reshape(-1, cfg.long_steps + 1, 3)
            )
            if cfg.long_runs > 1
            else []
        )
    )
    burn_in = min(1000, cfg.long_steps // 10)
    attractor = long_truth[:, burn_in:]
    # The scale and the histograms' box from the first run (as with one run), the
    # statistics pooled over all.
    scale = float(tdd.attractor_scale(attractor[0]))
    lo, hi = attractor[0].min(0), attractor[0].max(0)
    ranges = np.stack([lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)], -1)
    stats = tdd.attractor_statistics(attractor, ranges=ranges)
    # Long runs from training points past the same burn-in, spread as the test ones,
    # and the training split's own statistics there.
    n_train = len(train_x)
    if n_train <= burn_in + cfg.long_runs:
        raise ValueError(
            f"The training split ({n_train} points) is too short for --long-runs "
            f"{cfg.long_runs} after a burn-in of {burn_in} steps."
        )
    train_starts = train_x[
        burn_in + np.arange(cfg.long_runs) * ((n_train - burn_in) // cfg.long_runs)
    ]
    train_stats = tdd.attractor_statistics(train_x[burn_in:], ranges=ranges)
    rk4 = tdd.RK4Step()
    lorenz = tdd.Lorenz63(time_scale=cfg.dt)
    true_spectrum = lyapunov(
        rk4, lorenz, jnp.asarray(long_truth[:, 0]),
        cfg.lyap_steps, max(1, cfg.lyap_steps // 10), cfg.dt,
    )  # fmt: skip
    data_vpt = np.asarray(
        tdd.valid_prediction_time(
            data_segments, truth, dt=cfg.dt, threshold=cfg.threshold, scale=scale
        )
    )
    refs = dict(
        ics=ics, truth=truth, data_segments=data_segments, scale=scale,
        long_truth=long_truth, burn_in=burn_in,
        ranges=ranges, stats=stats, train_starts=train_starts,
        train_stats=train_stats,
        vpt_max=(cfg.horizon + 1) * cfg.dt * tdd.LORENZ63_LYAPUNOV_EXPONENT,
    )  # fmt: skip
    truth_row = dict(
        attractor_scale=scale,
        lyapunov_spectrum=np.median(np.asarray(true_spectrum), axis=0).tolist(),
        lyapunov_orbits=spread(np.asarray(true_spectrum)[:, 0]),
        equilibria=equilibrium_summary(lorenz, cfg.dt),
        # the training split's histogram against the exact attractor's: how far
        # the reference of the models' `attractor_train` is from the truth
        train_split_tv=float(np.mean(tdd.histogram_distance(train_stats, stats))),
        attractor=dict(
            mean=np.asarray(stats.mean).tolist(), std=np.asarray(stats.std).tolist()
        ),
        data_vpt=dict(mean=float(data_vpt.mean()), median=float(np.median(data_vpt))),
        ic_indices=idx.tolist(),
    )
    return refs, truth_row


def paired_vpt(a, b, *, seed: int = 0, draws: int = 20_000) -> dict:
    """Paired comparison of two models' VPTs over the same initial conditions: the
    mean difference `a - b`, its 95% bootstrap interval, the share of initial
    conditions where `a` lasts longer, and the two-sided p-value of a sign-flip
    permutation test of the mean difference (`draws` random sign patterns, seeded)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    boot = rng.choice(d, size=(draws, d.size)).mean(axis=1)
    flips = rng.choice([-1.0, 1.0], size=(draws, d.size)) @ d / d.size
    p = (1 + np.sum(np.abs(flips) >= abs(d.mean()))) / (1 + draws)
    return dict(
        mean_diff=float(d.mean()),
        ci_low=float(np.quantile(boot, 0.025)),
        ci_high=float(np.quantile(boot, 0.975)),
        longer=float(np.mean(d > 0)),
        p=float(p),
    )


def model_name(row: dict) -> str:
    """A row's model: its solver and training variant (`config.variant`), e.g.
    `fehlberg-0.1_lorenzsym`; an authors' row, or one without the entry, its solver."""
    return row.get("model", row["solver"])


def paired_comparisons(rows: list[dict]) -> list[dict]:
    """Fehlberg training against naive training at the same eps (and variant), and
    every trained model against the authors' Fehlberg model, where both rows are
    present."""
    by = {model_name(r): r for r in rows}
    pairs = [
        (m, m.replace("fehlberg-", "naive-", 1))
        for m in by
        if m.startswith("fehlberg-")
    ] + [
        (model_name(r), "authors-fehlberg") for r in rows if r["solver"] not in AUTHORS
    ]
    return [
        dict(a=a, b=b, **paired_vpt(by[a]["vpt_all"], by[b]["vpt_all"]))
        for a, b in pairs
        if a in by and b in by
    ]


def pooled_tv(row: dict) -> float:
    """A model's histogram distance to the true attractor, its long runs pooled (the
    mean of the per-coordinate distances of `row["attractor"]["tv"]`)."""
    return float(np.mean(row["attractor"]["tv"]))


def seed_summary(by_seed: dict[int, list[dict]]) -> dict:
    """The trained models of several seeds side by side: per model, its median VPT,
    median exponent, pooled histogram distances (test runs, and training runs against
    the training split), whether it meets the long-run criterion (largest exponent
    within 10% of the true one and a pooled TV below every authors' model present),
    and, per solver, the seed a test-free rule would pick: the smallest "hist TV
    (train)", which reads the training split only."""
    rows = []
    for seed, seed_rows in by_seed.items():
        authors_tv = [pooled_tv(r) for r in seed_rows if r["solver"] in AUTHORS]
        for r in seed_rows:
            if r["solver"] in AUTHORS:
                continue
            tv = pooled_tv(r)
            lle_ok = (
                abs(r["lyapunov"] - tdd.LORENZ63_LYAPUNOV_EXPONENT)
                <= 0.1 * tdd.LORENZ63_LYAPUNOV_EXPONENT
            )
            rows.append(
                dict(
                    solver=model_name(r), seed=seed, vpt_median=r["vpt"]["median"],
                    lyap=r["lyapunov"], tv=tv, train_tv=r["attractor_train"]["tv"],
                    outside=r["attractor"]["outside_fraction"],
                    long_run=bool(lle_ok and all(tv < a for a in authors_tv)),
                    selected=False,
                )
            )  # fmt: skip
    for solver in {r["solver"] for r in rows}:
        mine = [r for r in rows if r["solver"] == solver]
        min(mine, key=lambda r: r["train_tv"])["selected"] = True
    return dict(rows=rows)
