"""A prototype of a proposed change to `tadiffeq/_models/conv.py`, timed against the
library and the PyTorch reference in one process (interleaved).

The profile (`profile_step.py`, `profile_conv.py`) shows that the JAX training step
of the conv fields is dominated by the backward pass of the convolutions: the
weight tangent's `lax.conv_general_dilated_patches` (a grouped convolution) and,
above all, the stride-2 transposed ("up") convolutions, which convolve a 2x-dilated
input (3/4 zeros) in the forward pass, its transpose and the weight gradient.

The prototype `fast_conv2d` writes every conv of a field as plain data movement and
one matrix product, so the forward pass, its transpose (dX) and the weight
gradient (dW) are dots, which XLA:CPU runs fast inside loops:

- stride 1 and 2 ("same", "down"): an im2col from 9 static (strided) slices of the
  zero-padded input, then `patches @ w.reshape(9 cin, cout)`;
- the transposed conv ("up"): the sub-pixel decomposition. Output pixel (2p + r,
  2q + s) only sees input pixels p, p + 1 (and q, q + 1), so the 4 output phases
  are one dot of the 4 shifted copies of the *undilated* input, `(B, H, W, 4 cin)`,
  with a `(4 cin, 4 cout)` block kernel, followed by a depth-to-space reshape: no
  multiplications by the dilation's zeros (2.25x fewer flops than the dilated
  conv).

It is plain JAX (no custom derivative rules), so forward mode still works. This
script monkeypatches `tadiffeq._models.conv.conv2d` for the prototype's jitted
functions only; the library is not changed.

    python benchmarks/prototype_fastconv.py --model conv6 --batch 32 --repeats 5
"""

import os
import time


os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _common as C  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.lax as lax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import tadiffeq._models.conv as conv_module  # noqa: E402


LIB_CONV2D = conv_module.conv2d

# Per axis, output phase r of the "up" conv: (kernel tap, input shift) pairs.
_UP_TAPS = {0: ((1, 0),), 1: ((0, 0), (2, 1))}


def _im2col(x, stride, padding, k=3):
    lo, hi = padding
    xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    cols = [
        lax.slice(
            xp,
            (0, i, j, 0),
            (xp.shape[0], i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1,
             xp.shape[3]),
            (1, stride, stride, 1),
        )
        for i in range(k)
        for j in range(k)
    ]  # fmt: skip
    return jnp.concatenate(cols, axis=-1)  # feature index (i * k + j) * cin + c


def _up_kernel(w):
    """(4 cin, 4 cout) block kernel of the sub-pixel decomposition: rows are the
    shifted inputs (dp, dq), columns the output phases (r, s)."""
    _, _, cin, cout = w.shape
    zero = jnp.zeros((cin, cout), w.dtype)
    rows = []
    for dp in (0, 1):
        for dq in (0, 1):
            row = []
            for r in (0, 1):
                for s in (0, 1):
                    block = zero
                    for a, sa in _UP_TAPS[r]:
                        for b, sb in _UP_TAPS[s]:
                            if (sa, sb) == (dp, dq):
                                block = block + w[a, b]
                    row.append(block)
            rows.append(jnp.concatenate(row, axis=1))
    return jnp.concatenate(rows, axis=0)


def fast_conv2d(x, w, stride, padding, dilation):
    """Drop-in for `tadiffeq._models.conv.conv2d` (3x3 kernels, the three modes)."""
    kh, kw, cin, cout = w.shape
    if dilation == 1:
        return _im2col(x, stride, padding) @ w.reshape(kh * kw * cin, cout)
    if (stride, tuple(padding), dilation) != (1, (1, 2), 2) or (kh, kw) != (3, 3):
        return LIB_CONV2D(x, w, stride, padding, dilation)
    b, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    shifted = jnp.concatenate(
        [xp[:, dp : dp + h, dq : dq + wd] for dp in (0, 1) for dq in (0, 1)], axis=-1
    )
    out = shifted @ _up_kernel(w)  # (B, H, W, 4 cout), phases (r, s)
    out = out.reshape(b, h, wd, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, 2 * h, 2 * wd, cout)


class _UnrolledLax:
    """`jax.lax` with `scan(..., unroll=True)`: patched into
    `tadiffeq._solver.stateful` it unrolls the Runge--Kutta stage loop."""

    def __getattr__(self, name):
        return getattr(lax, name)

    @staticmethod
    def scan(*args, **kwargs):
        kwargs.setdefault("unroll", True)
        return lax.scan(*args, **kwargs)


def use(kind: str) -> None:
    """Configures the module-level monkeypatches for `kind`: `lib` (the library),
    `fast` (`fast_conv2d`), `libu` / `fastu` (the library's / the fast conv, with
    the solver's stage loop unrolled)."""
    import tadiffeq._solver.stateful as stateful

    conv_module.conv2d = LIB_CONV2D if kind in ("lib", "libu") else fast_conv2d
    stateful.lax = _UnrolledLax() if kind in ("fastu", "libu") else lax


def check_equivalence(seed=0):
    """`fast_conv2d` against the library's conv, values and gradients."""
    from tadiffeq._models.conv import _GEOMETRY

    errs = {}
    for mode, size in (("same", 8), ("down", 8), ("up", 4)):
        stride, padding, dilation = _GEOMETRY[mode]
        kx, kw = jax.random.split(jax.random.PRNGKey(seed))
        x = jax.random.normal(kx, (2, size, size, 5))
        w = jax.random.normal(kw, (3, 3, 5, 7))

        def loss(f, x, w, geometry=(stride, padding, dilation)):
            return jnp.sum(jnp.sin(f(x, w, *geometry)))

        a = LIB_CONV2D(x, w, stride, padding, dilation)
        b = fast_conv2d(x, w, stride, padding, dilation)
        ga = jax.grad(lambda x, w: loss(LIB_CONV2D, x, w), (0, 1))(x, w)
        gb = jax.grad(lambda x, w: loss(fast_conv2d, x, w), (0, 1))(x, w)
        errs[mode] = max(
            float(jnp.max(jnp.abs(a - b))),
            *(float(jnp.max(jnp.abs(u - v))) for u, v in zip(ga, gb)),
        )
    return errs


def main():
    p = C.base_parser(__doc__.splitlines()[0])
    p.set_defaults(model=["conv6"], batch=[32], repeats=5)
    p.add_argument(
        "--configs",
        nargs="+",
        default=["lib:checkpoint", "fast:checkpoint", "fast:backsolve", "torch:direct"],
        help="lib|fast|libu|fastu:checkpoint|backsolve, torch:adjoint|direct (the "
        "'u' kinds unroll the solver's stage loop)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    errs = check_equivalence(args.seed)
    print(f"fast_conv2d vs library conv2d, max abs error (values, grads): {errs}")
    results = dict(environment=C.environment(), args=vars(args), errors=errs, runs=[])
    for model in args.model:
        for batch in args.batch:
            results["runs"].append(run(args, model, batch))
            C.write_json(f"prototype_fastconv_{model}_b{batch}", results, args.out)


def run(args, model, batch):
    x, y = C.make_data(model, batch, args.seed)
    xj, yj = C.to_jnp(x, y)
    fns, info = {}, {}
    rec = dict(model=model, batch=batch)
    for cfg in args.configs:
        kind, mode = cfg.split(":")
        if kind == "torch":
            fns[cfg] = _torch_fn(args, model, mode, x, y)
            continue
        use(kind)
        # diffrax's `diffeqsolve` is itself jitted, so a config with the same pytree
        # structure as an earlier one would reuse that one's trace (and its conv
        # and stage loop): clear the caches, then compile ahead of time, so that
        # each config keeps its own executable whatever is patched later.
        jax.clear_caches()
        m, s = C.build_jax(model, seed=args.seed, adjoint=mode)
        opt = C.optimizer()
        o = opt.init(eqx.filter(m, eqx.is_inexact_array))
        forward = eqx.filter_jit(lambda m, s, x: m(x, s)[0])
        logits = C.block(forward(m, s, xj))
        rec.setdefault("forward_logits", {})[kind] = np.asarray(logits)
        start = time.perf_counter()
        compiled = C.make_train_step(opt).lower(m, o, s, xj, yj).compile()
        t, out = C.timed(lambda c=compiled, a=(m, o, s, xj, yj): C.block(c(*a)))
        print(
            f"[{cfg}] compile {time.perf_counter() - start - t:.1f} s, first step "
            f"{t:.1f} s, NFE {int(out[-1])}",
            flush=True,
        )

        def fn(c=compiled, a=(m, o, s, xj, yj)):
            _, _, _, loss, nfe = C.block(c(*a))
            return dict(loss=float(loss), nfe=int(nfe))

        fns[cfg] = fn
    use("lib")
    logits = rec.pop("forward_logits")
    for kind in ("fast", "fastu", "libu"):
        if "lib" in logits and kind in logits:
            diff = float(np.abs(logits["lib"] - logits[kind]).max())
            rec[f"logits_max_abs_diff_{kind}"] = diff
            print(f"lib vs {kind} training-mode logits: {diff:.2e}")
    for name, fn in fns.items():
        if name.startswith("torch"):
            _, info[name] = C.timed(fn)  # warm-up
    times = {name: [] for name in fns}
    for r in range(args.repeats):
        for name, fn in fns.items():
            t, info[name] = C.timed(fn)
            times[name].append(t)
        print(
            f"[{model} b{batch}] repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{n} {ts[-1]:.2f}s" for n, ts in times.items()),
            flush=True,
        )
    rows = [dict(config=n, **info[n], **C.summary(times[n])) for n in fns]
    lib = next((r["median_s"] for r in rows if r["config"].startswith("lib")), None)
    for r in rows:
        r["ratio_vs_lib"] = None if lib is None else r["median_s"] / lib
    print(f"\n{model} batch {batch}: training step")
    C.print_table(
        rows,
        [
            ("config", "config"),
            ("nfe", "NFE fwd"),
            ("loss", "loss"),
            ("median_s", "median s"),
            ("min_s", "min s"),
            ("repeats", "n"),
            ("ratio_vs_lib", "time / library JAX"),
        ],
    )
    rec["rows"] = rows
    return rec


def _torch_fn(args, model, mode, x, y):
    import torch
    import torch.nn.functional as F
    import torch_reference as R

    torch.set_num_threads(args.threads)
    jm, js = C.build_jax(model, seed=args.seed)
    tm = R.build(model, adjoint=mode == "adjoint")
    R.copy_from_jax(jm, js, tm)
    init = {k: v.clone() for k, v in tm.state_dict().items()}
    xt = R.to_torch_images(x, model)
    yt = torch.from_numpy(y.astype(np.int64))

    def fn():
        tm.load_state_dict(init)
        tm.train()
        opt = torch.optim.AdamW(tm.parameters(), lr=C.LR, weight_decay=C.WEIGHT_DECAY)
        opt.zero_grad()
        tm.func.nfe = 0
        loss = F.cross_entropy(tm(xt), yt)
        nfe = tm.func.nfe
        loss.backward()
        opt.step()
        return dict(loss=float(loss.item()), nfe=nfe)

    return fn


if __name__ == "__main__":
    main()
