"""tadiffeq (JAX) against a PyTorch + torchdiffeq reference with identical weights.

For each model and batch size: build tadiffeq's unmixed classifier, copy its weights
into the torch reference (`torch_reference.py`), check that both give the same
logits (training and inference mode) and the same number of function evaluations,
then time

- a training step (forward + backward + AdamW update), JAX with
  `RecursiveCheckpointAdjoint` and `BacksolveAdjoint`, torch with `odeint_adjoint`
  (the paper's setting) and plain `odeint` (backprop through the solver), and
- an inference batch (forward only, the batch solved jointly on both sides).

The configurations are timed interleaved (one repeat of each in turn), so that load
from other processes affects all of them alike. Every repeat starts from the same
weights and optimizer state, so every repeat does the same work. Reported: the
median over `--repeats` after `--warmup` untimed calls (the first JAX call compiles).

Each timing row also gives the achieved rate of the field's matrix FLOPs
(`_flops.py`: the convolutions and products of one evaluation at that batch, F):
NFE x F per inference batch, 3 x NFE x F per training step (the forward pass and
the two gradient products of every forward evaluation: "model FLOPs", the same
count for every side and adjoint, recomputation not counted), over the median
time; `--peak-gflops` adds the share of a nominal peak. The JSON's environment
holds the rate of a large float32 matrix product on the same device, for
comparison.

The torch side is skipped when torch or torchdiffeq is not installed; on a GPU
machine `--torch-device cuda` runs it there (synchronised before every clock read).

    python -m benchmarks.bench_vs_torch --model conv6 --batch 32 --repeats 20
"""

import os
import sys


# On a shared machine torch's OpenMP threads spin while waiting, which makes small
# ops ~30x slower when other processes load the cores; passive waiting avoids it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import equinox as eqx
import numpy as np

from . import _common as C, _flops


try:
    import torch
    import torch.nn.functional as F

    from . import torch_reference as R
except ImportError as e:  # pragma: no cover - depends on the environment
    torch = None
    _TORCH_ERROR = str(e)


def _jax_configs(args):
    jax_models = {}
    for adj in args.jax_adjoints:
        jax_models[adj] = C.build_jax(
            args.model_name, adjoint=adj, **C.solve_options(args)
        )
    return jax_models


def _equivalent(check: dict) -> bool:
    """Same logits (to 1e-3 of their scale) and NFE within 2 (the two libraries
    count the initial-step heuristic's evaluations differently)."""
    scale = max(1.0, check["max_abs_logit"])
    close = check["max_abs_diff"] <= 1e-3 * scale
    return close and abs(check["nfe_jax"] - check["nfe_torch"]) <= 2


def run_one(args, model: str, batch: int) -> dict:
    args.model_name = model
    x, y = C.make_data(model, batch, args.seed)
    xj, yj = C.to_jnp(x, y)
    jax_models = _jax_configs(args)
    jm, st0 = next(iter(jax_models.values()))
    record = dict(model=model, batch=batch, checks={}, train=[], infer=[])
    record["field_flops"] = _flops.field_flops(jm.ode.field, st0, jm.ode._lift(xj))
    dev = args.torch_device

    # A training-mode forward fills the TA-BN statistics used at inference.
    logits_train, st1, nfe_train = C.block(C.forward_train(jm, st0, xj))
    jm_inf = eqx.nn.inference_mode(jm)

    tm = None
    if torch is not None:
        torch.manual_seed(args.seed)
        tm = R.build(
            model,
            hidden=args.hidden,
            rtol=args.rtol,
            atol=args.atol,
            land_on_t1=not args.torch_overshoot,
            swap_weights=args.swap_weights,
        ).to(dev)
        xt = R.to_torch_images(x, model).to(dev)
        yt = torch.from_numpy(y.astype(np.int64)).to(dev)
        # Equivalence: same logits and NFE in training and inference mode.
        R.copy_from_jax(jm, st0, tm)
        tm.train()
        tm.func.nfe = 0
        with torch.no_grad():
            lt = tm(xt).cpu().numpy()
        record["checks"]["train_forward"] = dict(
            max_abs_diff=float(np.abs(lt - np.asarray(logits_train)).max()),
            max_abs_logit=float(np.abs(lt).max()),
            nfe_jax=int(nfe_train),
            nfe_torch=tm.func.nfe,
        )
        R.copy_from_jax(jm, st1, tm)
        tm.eval()
        tm.func.nfe = 0
        li_j, nfe_i = C.block(C.predict(jm_inf, st1, xj))
        with torch.no_grad():
            li_t = tm(xt).cpu().numpy()
        record["checks"]["infer_forward"] = dict(
            max_abs_diff=float(np.abs(li_t - np.asarray(li_j)).max()),
            max_abs_logit=float(np.abs(li_t).max()),
            nfe_jax=int(nfe_i),
            nfe_torch=tm.func.nfe,
        )
        print(f"[{model} b{batch}] checks: {record['checks']}", flush=True)
        bad = [k for k, c in record["checks"].items() if not _equivalent(c)]
        record["equivalent"] = not bad
        if bad and not (args.allow_mismatch or args.swap_weights):
            raise SystemExit(
                f"[{model} b{batch}] the two sides disagree ({', '.join(bad)}: "
                f"{record['checks']}); timings would compare different work. "
                "--allow-mismatch times them anyway."
            )
        R.copy_from_jax(jm, st0, tm)
        init_sd = {k: v.clone() for k, v in tm.state_dict().items()}

    if args.check_only:
        return record

    # ------------------------------------------------------------------ training
    train_fns = {}
    if "train" in args.what:
        step = C.make_train_step(C.optimizer())
        for adj, (m, s) in jax_models.items():
            opt_state = C.optimizer().init(eqx.filter(m, eqx.is_inexact_array))

            def jax_step(m=m, s=s, opt_state=opt_state):
                _, _, _, loss, nfe = C.block(step(m, opt_state, s, xj, yj))
                return dict(loss=float(loss), nfe=int(nfe), nfe_backward=None)

            train_fns[f"jax:{adj}"] = jax_step
        if tm is not None:
            for mode in args.torch_modes:

                def torch_step(mode=mode):
                    tm.load_state_dict(init_sd)
                    tm.train()
                    tm.adjoint = mode == "adjoint"
                    opt = torch.optim.AdamW(
                        tm.parameters(), lr=C.LR, weight_decay=C.WEIGHT_DECAY
                    )
                    return _torch_train_step(tm, opt, xt, yt, dev)

                train_fns[f"torch:{mode}"] = torch_step
        record["train"] = _interleaved(train_fns, args, f"{model} b{batch} train")

    # ----------------------------------------------------------------- inference
    if "infer" in args.what:
        infer_fns = {}

        def jax_infer():
            _, nfe = C.block(C.predict(jm_inf, st1, xj))
            return dict(nfe=int(nfe))

        infer_fns["jax"] = jax_infer
        if tm is not None:

            def torch_infer():
                tm.eval()
                tm.func.nfe = 0
                with torch.no_grad():
                    tm(xt)
                _sync(dev)
                return dict(nfe=tm.func.nfe)

            R.copy_from_jax(jm, st1, tm)
            infer_fns["torch"] = torch_infer
        record["infer"] = _interleaved(infer_fns, args, f"{model} b{batch} infer")
    _add_rates(record, args.peak_gflops)
    return record


def _add_rates(record: dict, peak_gflops: float | None) -> None:
    """Achieved GFLOP/s of every timing row (see the module docstring)."""
    flops = record["field_flops"]["total"]
    for what, factor in (("train", 3), ("infer", 1)):
        for row in record[what]:
            row["gflops"] = factor * row["nfe"] * flops / row["median_s"] / 1e9
            if peak_gflops:
                row["peak_share"] = f"{row['gflops'] / peak_gflops:.1%}"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _torch_train_step(tm, opt, xt, yt, device) -> dict:
    opt.zero_grad(set_to_none=True)
    tm.func.nfe = 0
    logits = tm(xt)
    nfe_forward = tm.func.nfe
    loss = F.cross_entropy(logits, yt)
    loss.backward()
    opt.step()
    _sync(device)
    return dict(
        loss=float(loss.item()),
        nfe=nfe_forward,
        nfe_backward=tm.func.nfe - nfe_forward,
    )


def _interleaved(fns: dict, args, label: str) -> list[dict]:
    """Interleaved timing rows (`_common.interleaved`), one per `side:mode`."""
    info, times = C.interleaved(fns, args.repeats, args.warmup, label)
    rows = []
    for name in fns:
        side, _, mode = name.partition(":")
        row = dict(side=side, mode=mode or "-", **info[name])
        rows.append(dict(row, **C.summary(times[name])))
    return rows


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--what", nargs="+", default=["train", "infer"])
    p.add_argument("--jax-adjoints", nargs="+", default=["checkpoint", "backsolve"])
    p.add_argument("--torch-modes", nargs="+", default=["adjoint", "direct"])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--torch-device", default="cpu", help="where the torch side runs: cpu, cuda"
    )
    p.add_argument(
        "--peak-gflops",
        type=float,
        default=None,
        help="nominal peak of the device (GFLOP/s) for the 'of peak' column",
    )
    p.add_argument(
        "--check-only",
        action="store_true",
        help="only the equivalence checks (logits and NFE), no timing",
    )
    p.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="time the two sides even when their logits or NFE disagree",
    )
    p.add_argument(
        "--swap-weights",
        action="store_true",
        help="torch TA-BN with the authors' swapped interpolation weights (the "
        "outputs then differ from tadiffeq's)",
    )
    p.add_argument(
        "--torch-overshoot",
        action="store_true",
        help="let torchdiffeq step past t1 and interpolate (its default); by default "
        "its last step is clipped to t1 as diffrax does (options step_t=[t1])",
    )
    args = p.parse_args()
    env = C.environment()
    env["matmul"] = _flops.matmul_gflops()
    print(f"float32 matrix product on {env['jax_device']}: {env['matmul']}", flush=True)
    if torch is None:
        print(f"torch side skipped: {_TORCH_ERROR}", file=sys.stderr)
    else:
        torch.set_num_threads(args.threads)
        env.update(
            torch=torch.__version__,
            torchdiffeq=R.torchdiffeq.__version__,
            torch_threads=torch.get_num_threads(),
            torch_device=args.torch_device,
        )
        if args.torch_device.startswith("cuda"):
            env.update(
                torch_cuda_device=torch.cuda.get_device_name(),
                torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            )
    results = dict(environment=env, args=vars(args), runs=[])
    name = "vs_torch_" + "_".join(args.model) + "_b" + "_".join(map(str, args.batch))
    if args.check_only:
        name += "_check"
    for model in args.model:
        for batch in args.batch:
            rec = run_one(args, model, batch)
            results["runs"].append(rec)
            _report(rec)
            C.write_json(name, results, args.out)


def _report(rec: dict) -> None:
    gflop = rec["field_flops"]["total"] / 1e9
    print(f"\n{rec['model']} batch {rec['batch']}: {gflop:.3g} GFLOP per evaluation")
    for what in ("train", "infer"):
        if rec[what]:
            print(f"\n{rec['model']} batch {rec['batch']}: {what}")
            C.print_table(C.vs_torch_rows(rec[what]), "vs_torch")


if __name__ == "__main__":
    main()
