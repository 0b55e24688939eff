"""Neural ODE training with an adaptive solver on Lorenz'63 (Allauzen, Dardis and
Plath, "Experimental study of Neural ODE training with adaptive solver for dynamical
systems modeling", NeurIPS 2022 DLDE workshop).

The paper's setup: the 10,000-point Lorenz'63 run of the study (sampled every 0.01
time units; first 5,000 points train, last 5,000 test), time rescaled so one sample
step is h = 1; an autonomous MLP field 3 -> 50 -> 50 -> 3 with ReLU in float64; the
one-step-ahead MSE from the true previous point over all 4,999 training transitions
(full batch); L-BFGS (optax.lbfgs, memory 100, zoom linesearch with the strong Wolfe
conditions). Solvers (--solvers):

- naive-EPS: training through Fehlberg's 3(2) with the study's step rule as is
  (eps = EPS in 0.1, 0.05, 0.01); inference with the same rule;
- fehlberg-EPS: "Fehlberg training", the target in the error estimate during
  training; inference with the standard rule;
- rk4: fixed-step RK4, one step per sample;
- dopri5, tsit5: diffrax's adaptive solvers with a PIDController (rtol 1e-3, atol
  1e-6, first step h); trained with the batch as one system, evaluated with a solve
  per sample.

Per model: one-step test MSE; acceptance rate and substeps in training and in
inference; the valid prediction time (normalised error threshold 0.4, in Lyapunov
times, lambda = 0.9056) of free runs from --num-ics test initial conditions against
the exact flow; the learned map's Lyapunov spectrum (median over --long-runs orbits);
long-run attractor statistics against the exact flow (--long-runs runs pooled);
figures. Checkpoints to --out and resumes from there.

--authors-models DIR adds the study's own two trained models (DIR holds their .npz
weights, see `load_authors_model`) as reference rows `authors-naive` (naive training,
eps = 0.1) and `authors-fehlberg` (Fehlberg training, eps = 0.1), evaluated with the
same inference rule and every metric above, without training (`--solvers none`
evaluates only them).

The package: `config` (solvers, the authors' models, `LorenzConfig`), `model` (the
field, the study's models, the one-step rules, the data), `training` (L-BFGS on the
one-step or rollout loss; the stability repair), `evaluation` (free
runs and every metric), `figures`, `cli` (runs and the command line).

    python -m experiments.lorenz63 --iterations 300
    python -m experiments.lorenz63 --solvers none --authors-models DIR
"""

from .cli import main as main, run as run, run_authors as run_authors
from .config import (
    AUTHORS as AUTHORS,
    LorenzConfig as LorenzConfig,
    SOLVERS as SOLVERS,
    TRAIN_FIELDS as TRAIN_FIELDS,
    variant as variant,
)
from .evaluation import (
    evaluate as evaluate,
    model_name as model_name,
    one_step as one_step,
    paired_comparisons as paired_comparisons,
    paired_vpt as paired_vpt,
    references as references,
)
from .model import (
    AutonomousMLP as AutonomousMLP,
    load_authors_model as load_authors_model,
    load_data as load_data,
    make_field as make_field,
    make_steppers as make_steppers,
)
from .training import (
    one_step_loss as one_step_loss,
    repair as repair,
    rollout_loss as rollout_loss,
    rollout_windows as rollout_windows,
    stability_prior as stability_prior,
    StabilityPrior as StabilityPrior,
    stop_iteration as stop_iteration,
    train as train,
    training_loss as training_loss,
    training_windows as training_windows,
)
