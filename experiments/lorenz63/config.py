"""The study's settings: the solvers, the authors' models, the run configuration."""

from dataclasses import dataclass


SOLVERS = (
    "naive-0.1", "naive-0.05", "naive-0.01",
    "fehlberg-0.1", "fehlberg-0.05", "fehlberg-0.01",
    "rk4", "dopri5", "tsit5",
)  # fmt: skip
# `LorenzConfig.symmetry`: the field's symmetry prior ("none": the study's MLP).
SYMMETRIES = ("none", "lorenz")
# The study's own trained models (Allauzen, Dardis and Plath): row name -> (file in
# the --authors-models folder, the solver whose training and inference rules they
# were fitted and are used with).
AUTHORS = {
    "authors-naive": ("naive_batch_training_100epochs.npz", "naive-0.1"),
    "authors-fehlberg": ("fehlberg_training_200epochs.npz", "fehlberg-0.1"),
}
# Fields that fix the evaluation of a given model (the solver's inference rule and the
# metrics): the study's own models are evaluated again only if one of them changes.
EVAL_FIELDS = (
    "solver", "hidden", "depth", "safety", "max_substeps", "rtol", "atol", "dt",
    "data", "n_points", "num_ics", "horizon", "long_steps", "lyap_steps", "threshold",
    "long_runs",
)  # fmt: skip
# Fields that fix the training run: a checkpoint resumes only if they match.
TRAIN_FIELDS = (
    "solver", "hidden", "depth", "memory_size", "safety", "max_substeps", "rtol",
    "atol", "dt", "data", "n_points", "seed", "rollout", "input_noise", "symmetry",
)  # fmt: skip
# Fields that fix the stability repair of a trained model (`training.repair`).
REPAIR_FIELDS = TRAIN_FIELDS + (
    "iterations", "stall_window", "min_improvement",
    "stability_weight", "stability_starts", "stability_iterations",
    "stability_tolerance",
)  # fmt: skip


@dataclass
class LorenzConfig:
    solver: str = "naive-0.1"
    iterations: int = 300  # L-BFGS iterations (the paper trained for longer)
    hidden: int = 50
    depth: int = 2
    memory_size: int = 100  # the paper's L-BFGS history size
    safety: float = 0.9
    max_substeps: int = 10
    rtol: float = 1e-3  # diffrax solvers (scipy's RK45 defaults)
    atol: float = 1e-6
    dt: float = 0.01  # time units per sample (h = 1 in rescaled time)
    data: str = "shared"  # "shared" (the study's files) or "generated"
    n_points: int = 10000  # generated data: train + test
    num_ics: int = 100  # free-run initial conditions from the test split
    horizon: int = 1000  # free-run steps per initial condition (9 Lyapunov times)
    long_steps: int = 20000  # each long run, for the attractor statistics
    lyap_steps: int = 10000  # steps averaged for the Lyapunov exponents
    # Long runs and Lyapunov orbits, from this many test points spread evenly over the
    # test split: a chaotic run's statistics depend on rounding (one 19,000-step run's
    # histogram distance moved from 0.092 to 0.106 between two jax releases), so they
    # are pooled over several runs, and the exponents' spread is reported.
    long_runs: int = 10
    threshold: float = 0.4  # on the normalised error, for the VPT
    seed: int = 0
    # Training loss over this many steps ahead: each step starts from the previous
    # *prediction* (its target, for Fehlberg training, the true next point); 1 is
    # the study's one-step loss.
    rollout: int = 1
    # With a positive value, every training window appears twice: as recorded, and with
    # N(0, input_noise^2) added to its first point (data units, drawn once per seed),
    # so the loss also asks the model to come back to the trajectory from states near
    # it, which free runs visit and the recorded data never show. 0: the study's data.
    # A bias, knowingly: the target stays the recorded next point, so a perturbation is
    # to be undone in one step in every direction, the unstable one too, where the true
    # flow would grow it; too much noise teaches a less chaotic map.
    input_noise: float = 0.0
    # "lorenz": the field is `tadiffeq.dynamics.Symmetrized` over Lorenz'63's symmetry
    # (x1, x2, x3) -> (-x1, -x2, x3), the MLP averaged with its mirror image (same
    # parameters, twice the evaluations). A prior the study's models do not have: the
    # training series never comes within 7.15 units of C+ (861 of its 5,000 points lie
    # within 4 of C-, the transient spiralling out of it), so without it the field
    # near C+ is extrapolation; with it, C+ behaves as the data show C- does.
    # "none": the study's field.
    symmetry: str = "none"
    # With a positive weight, L-BFGS is followed by `training.repair` with
    # `training.StabilityPrior` (weight x the mean over `stability_starts` Newton
    # starts, training points, of relu(-growth)^2 at the equilibrium reached, growth
    # per time unit, if inside the data's box): a projection onto prior 0, then at
    # most `stability_iterations` L-BFGS iterations on the loss plus the prior, until
    # the prior is 0 and the training MSE within `stability_tolerance` times the
    # trained model's. The data never settle on a point, so an attracting equilibrium
    # among them is wrong, and free runs that pass near one are captured. Not in
    # TRAIN_FIELDS: the L-BFGS phase is the study's, so its checkpoint can be shared.
    # 0: the study's training.
    stability_weight: float = 0.0
    stability_starts: int = 64
    stability_iterations: int = 300
    stability_tolerance: float = 1.2
    # The stopping rule (it ends a run, it does not change its trajectory, so it is not
    # in TRAIN_FIELDS): stop at the first multiple of `stall_window` iterations where
    # the training MSE (one step, from the true points) fell by less than the fraction
    # `min_improvement` over the last `stall_window` iterations; at the latest after
    # `iterations`. 0 turns it off.
    stall_window: int = 0
    min_improvement: float = 0.01


def variant(cfg: LorenzConfig, *, repair: bool = True) -> str:
    """The suffix that names a run's training variant, in its folder and its rows ("":
    the study's training): the rollout, input noise and symmetry, and with `repair`
    the stability repair (without it: the folder of the L-BFGS phase, which a repaired
    run shares with the run without the repair)."""
    return (
        ("" if cfg.rollout == 1 else f"_rollout{cfg.rollout}")
        + (f"_noise{cfg.input_noise:g}" if cfg.input_noise else "")
        + ("" if cfg.symmetry == "none" else f"_{cfg.symmetry}sym")
        + (
            f"_stability{cfg.stability_weight:g}"
            if repair and cfg.stability_weight
            else ""
        )
    )
