"""Parameter counts of the unmixed classifiers, with and without TA-BN's per-grid
affine, and with the other normalisations (the tables in docs/models.md).

    python -m experiments.param_counts [--num-intervals 100] [--seed 0]
"""

import argparse

import equinox as eqx
import jax

import tadiffeq as td


FIELDS = ["conv4", "conv6", "conv8", "conv10", "conv12", "unet", "mlp"]


NORMS = ["none", "minibatch", "popti"]


def build(
    field: str, image_shape, num_classes: int, num_intervals: int, key, norm="tabn"
):
    h, w, c = image_shape
    nk = dict(num_intervals=num_intervals) if norm == "tabn" else None
    kw = dict(norm=norm, norm_kwargs=nk)
    k1, k2 = jax.random.split(key)
    if field == "unet":
        f = td.UNetField(c, key=k1, **kw)
    elif field == "mlp":
        f = td.MLPField(h * w * c, (100,), key=k1, **kw)
    else:
        f = td.ConvField(c, int(field[4:]), key=k1, **kw)
    return td.UnmixedClassifier(td.NeuralODE(f), image_shape, num_classes, key=k2)


def rows(num_intervals: int = 100, seed: int = 0):
    out = []
    key = jax.random.PRNGKey(seed)
    for field in FIELDS:
        shape = (28, 28, 1) if field == "mlp" else (32, 32, 3)
        model, _ = eqx.nn.make_with_state(build)(field, shape, 10, num_intervals, key)
        others = {
            norm: td.count_parameters(
                eqx.nn.make_with_state(build)(
                    field, shape, 10, num_intervals, key, norm
                )[0]
            )
            for norm in NORMS
        }
        out.append(
            dict(
                field=field,
                input="x".join(map(str, shape)),
                with_grid=td.count_parameters(model),
                without_grid=td.count_parameters(model, grid_affine=False),
                **others,
            )
        )
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-intervals", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = rows(args.num_intervals, args.seed)
    m = args.num_intervals
    print(f"| vector field | input | params, TA-BN affine on {m + 1} grid points "
          "| params, one affine per BN layer |")  # fmt: skip
    print("|---|---|---:|---:|")
    for r in table:
        counts = f"{r['with_grid']:,} | {r['without_grid']:,}"
        print(f"| {r['field']} | {r['input']} | {counts} |")
    print("\n| vector field | none | mini-batch BN | Pop-TI BN |\n|---|---:|---:|---:|")
    for r in table:
        print(f"| {r['field']} | " + " | ".join(f"{r[n]:,}" for n in NORMS) + " |")
    return table


if __name__ == "__main__":
    main()
