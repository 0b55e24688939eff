"""A latent ODE for irregularly sampled multivariate time series (Rubanova, Chen and
Duvenaud, 2019), with a GRU encoder and a Neural ODE decoder."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._fields.mlp import MLPField
from .._misc import check_float, check_positive_int
from .._neural_de import SolveStats
from .._neural_ode import NeuralODE
from .._norm.state import check_state
from .._regularizers.base import AbstractRegularizer


class LatentODE(eqx.Module):
    """A latent ODE for irregularly sampled time series with missing values, e.g. the
    PhysioNet 2012 ICU records ([`tadiffeq.data.load_physionet`][]).

    - **Encoder**: an `eqx.nn.GRUCell` run backwards in time over the grid, from the
      last time to the first; its input at time t_i is `[x_i * m_i, m_i, t_i]`
      (values, 0/1 mask, time). Grid times where a series has no observation leave
      its hidden state unchanged. A linear layer maps the final hidden state to the
      mean and log standard deviation of q(z0). (A plain GRU, not Rubanova et al.'s
      ODE-RNN: the hidden state does not evolve between observations.)
    - **Dynamics**: z0 (sampled from q(z0) in training, its mean in inference mode)
      is integrated by a [`tadiffeq.NeuralODE`][] with a tanh
      [`tadiffeq.MLPField`][] on [0, 1], the batch as one system in training,
      saving at the grid times (`SaveAt(ts=times)`).
    - **Decoder**: a linear map from the latent state to the features.

    The training objective ([`tadiffeq.LatentODE.loss`][]) is the masked Gaussian
    negative log-likelihood with a fixed observation standard deviation, plus
    `kl_weight` times KL(q(z0) || N(0, I)), plus `reg_weight` times the regularizer's
    value.

    **Arguments:**

    - `features`: D, the number of observed features (37 for PhysioNet).
    - `latent`: the latent (ODE state) dimension (default 20, as Pal et al.).
    - `hidden`: the GRU's hidden size (default 40).
    - `field_hidden`: the widths of the vector field's hidden layers (default
      `(40, 40)`).
    - `solver`, `stepsize_controller`, `dt0`, `max_steps`, `adjoint`: passed to the
      `NeuralODE` (default `Tsit5()`, `PIDController(rtol=1e-3, atol=1e-3)`, `None`,
      4096, `RecursiveCheckpointAdjoint()`).
    - `obs_std`: the fixed observation noise of the likelihood (default 0.01, as
      Rubanova et al.).
    - `init_logstd`: the initial bias of log std q(z0) (default -2, a posterior
      standard deviation of about 0.14 at the start, so that early training is not
      drowned in sampling noise).
    - `key`: a `jax.random` key.

    Build with `model, state = eqx.nn.make_with_state(LatentODE)(..., key=key)`; the
    state is the (here empty) normalisation state of the field.

    ??? cite "Reference"

        ```bibtex
        @inproceedings{rubanova2019latent,
            title={Latent Ordinary Differential Equations for Irregularly-Sampled
                   Time Series},
            author={Rubanova, Yulia and Chen, Ricky T. Q. and Duvenaud, David},
            booktitle={Advances in Neural Information Processing Systems},
            year={2019}
        }
        ```
    """

    encoder: eqx.nn.GRUCell
    to_latent: eqx.nn.Linear
    node: NeuralODE
    decoder: eqx.nn.Linear
    features: int = eqx.field(static=True)
    latent: int = eqx.field(static=True)
    obs_std: float = eqx.field(static=True)
    inference: bool

    def __init__(
        self,
        features: int = 37,
        latent: int = 20,
        hidden: int = 40,
        field_hidden: tuple[int, ...] = (40, 40),
        *,
        solver: dfx.AbstractSolver | None = None,
        stepsize_controller: dfx.AbstractStepSizeController | None = None,
        dt0: float | None = None,
        max_steps: int = 4096,
        adjoint: dfx.AbstractAdjoint | None = None,
        obs_std: float = 0.01,
        init_logstd: float = -2.0,
        key: PRNGKeyArray,
    ):
        for name, value in (
            ("features", features),
            ("latent", latent),
            ("hidden", hidden),
        ):
            check_positive_int(name, value)
        check_float("obs_std", obs_std, owner="LatentODE", low=0.0, low_open=True)
        if jnp.ndim(init_logstd) == 0:  # (a per-dimension vector is also taken)
            check_float("init_logstd", init_logstd, owner="LatentODE")
        k_enc, k_lat, k_field, k_dec = jax.random.split(key, 4)
        self.encoder = eqx.nn.GRUCell(2 * features + 1, hidden, key=k_enc)
        to_latent = eqx.nn.Linear(hidden, 2 * latent, key=k_lat)
        assert to_latent.bias is not None  # use_bias=True
        self.to_latent = eqx.tree_at(
            lambda lin: lin.bias, to_latent, to_latent.bias.at[latent:].set(init_logstd)
        )
        field = MLPField(
            latent, tuple(field_hidden), activation="tanh", norm="none", key=k_field
        )
        self.node = NeuralODE(
            field,
            solver=dfx.Tsit5() if solver is None else solver,
            stepsize_controller=stepsize_controller,
            dt0=dt0,
            adjoint=adjoint,
            max_steps=max_steps,
        )
        self.decoder = eqx.nn.Linear(latent, features, key=k_dec)
        self.features = features
        self.latent = latent
        self.obs_std = float(obs_std)
        self.inference = False

    def check_inputs(self, times, values, mask):
        """`(times, values, mask)` as arrays, after checking their shapes against
        each other and the model: `times` (T,), `values` and `mask` (batch, T,
        features). Raises a ValueError naming the argument otherwise, and at run time
        an error if an observed value is not finite; unobserved values are zeroed."""
        times, values, mask = jnp.asarray(times), jnp.asarray(values), jnp.asarray(mask)
        if times.ndim != 1 or times.shape[0] < 1:
            raise ValueError(
                f"`times` must be a non-empty 1-D array, got {times.shape}."
            )
        expected = (times.shape[0], self.features)
        if values.ndim != 3 or values.shape[1:] != expected:
            raise ValueError(
                f"`values` must have shape (batch, {expected[0]}, {expected[1]}) "
                f"(batch, times, features), got {values.shape}."
            )
        if mask.shape != values.shape:
            raise ValueError(
                f"`mask` must have the shape of `values` {values.shape}, got "
                f"{mask.shape}."
            )
        # Unobserved entries may hold anything (PhysioNet's missing values are NaN
        # in some exports): they are zeroed; observed ones must be finite.
        observed = mask > 0
        values = eqx.error_if(
            values,
            ~jnp.all(jnp.isfinite(jnp.where(observed, values, 0.0))),
            "LatentODE: `values` holds NaN or inf at an observed entry (mask > 0).",
        )
        return times, jnp.where(observed, values, 0.0), mask

    def encode(
        self,
        times: Float[ArrayLike, " times"],
        values: Float[ArrayLike, "batch times features"],
        mask: Float[ArrayLike, "batch times features"],
    ) -> tuple[Float[Array, "batch latent"], Float[Array, "batch latent"]]:
        """The mean and log standard deviation of q(z0 | observations)."""
        times, values, mask = self.check_inputs(times, values, mask)
        batch = values.shape[0]
        inputs = jnp.concatenate(
            [
                values * mask,
                mask,
                jnp.broadcast_to(times[None, :, None], (batch, times.shape[0], 1)),
            ],
            axis=-1,
        ).astype(self.to_latent.weight.dtype)
        seen = jnp.any(mask > 0, axis=-1)  # (batch, times)
        gru = jax.vmap(self.encoder)

        def step(h, xs):
            x, s = xs
            return jnp.where(s[:, None], gru(x, h), h), None

        h0 = jnp.zeros((batch, self.encoder.hidden_size), inputs.dtype)
        xs = (jnp.swapaxes(inputs, 0, 1), jnp.swapaxes(seen, 0, 1))
        h, _ = jax.lax.scan(step, h0, xs, reverse=True)
        out = jax.vmap(self.to_latent)(h)
        return out[:, : self.latent], out[:, self.latent :]

    def __call__(
        self,
        times: Float[ArrayLike, " times"],
        values: Float[ArrayLike, "batch times features"],
        mask: Float[ArrayLike, "batch times features"],
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray | None = None,
        regularizer: AbstractRegularizer | None = None,
    ) -> tuple[
        Float[Array, "batch times features"],
        tuple[Float[Array, "batch latent"], Float[Array, "batch latent"]],
        eqx.nn.State,
        SolveStats,
    ]:
        """Encodes the observations and decodes the latent trajectory at `times`.

        **Arguments:**

        - `times`: the increasing grid times in [0, 1], `(T,)`.
        - `values`, `mask`: `(batch, T, features)`; masked entries are ignored.
        - `state`: the field's normalisation state.
        - `key`: for sampling z0 (training mode) and the regularizer; without one
          (or in inference mode) z0 is the mean of q(z0).
        - `regularizer`: an optional [`tadiffeq.AbstractRegularizer`][] for the
          (training) solve.

        **Returns:** `(prediction, (mean, logstd), state, stats)`: the decoded
        trajectory `(batch, T, features)`, the parameters of q(z0), the state and
        the solve's [`tadiffeq.SolveStats`][].
        """
        times, values, mask = self.check_inputs(times, values, mask)
        check_state("LatentODE", self, state)
        mean, logstd = self.encode(times, values, mask)
        k_z, k_reg = (None, None) if key is None else jax.random.split(key)
        if self.inference or k_z is None:
            z0 = mean
        else:
            z0 = mean + jnp.exp(logstd) * jax.random.normal(k_z, mean.shape, mean.dtype)
        ys, state, stats = self.node(
            z0, state, ts=times, regularizer=regularizer, key=k_reg
        )  # (T, batch, latent)
        pred = ys @ self.decoder.weight.T + self.decoder.bias
        return jnp.swapaxes(pred, 0, 1), (mean, logstd), state, stats

    @staticmethod
    def masked_mse(
        prediction: Float[ArrayLike, "batch times features"],
        values: Float[ArrayLike, "batch times features"],
        mask: Float[ArrayLike, "batch times features"],
    ) -> Float[Array, " batch"]:
        """Per series: the mean squared error over its observed entries (0 for a
        series without observations)."""
        mask = jnp.asarray(mask)
        err = jnp.where(mask > 0, (jnp.asarray(prediction) - values) ** 2, 0.0)
        count = jnp.sum(mask, axis=(1, 2))
        return jnp.sum(err, axis=(1, 2)) / jnp.maximum(count, 1.0)

    @staticmethod
    def gaussian_nll(
        prediction: Float[ArrayLike, "batch times features"],
        values: Float[ArrayLike, "batch times features"],
        mask: Float[ArrayLike, "batch times features"],
        obs_std: float,
    ) -> Float[Array, " batch"]:
        """Per series: the negative log-likelihood of N(values; prediction,
        obs_std^2) averaged over its observed entries (Rubanova et al. also average
        over observations)."""
        sq = LatentODE.masked_mse(prediction, values, mask)
        observed = jnp.sum(jnp.asarray(mask), axis=(1, 2)) > 0
        const = math.log(obs_std) + 0.5 * math.log(2 * math.pi)
        return jnp.where(observed, 0.5 * sq / obs_std**2 + const, 0.0)

    @staticmethod
    def kl_normal(
        mean: Float[ArrayLike, "batch latent"], logstd: Float[ArrayLike, "batch latent"]
    ) -> Float[Array, " batch"]:
        """Per series: KL(N(mean, exp(logstd)^2) || N(0, I)), summed over the latent
        dimensions."""
        mean, logstd = jnp.asarray(mean), jnp.asarray(logstd)
        return jnp.sum(0.5 * (mean**2 + jnp.exp(2 * logstd) - 1) - logstd, axis=-1)

    def loss(
        self,
        times: Float[ArrayLike, " times"],
        values: Float[ArrayLike, "batch times features"],
        mask: Float[ArrayLike, "batch times features"],
        state: eqx.nn.State,
        *,
        key: PRNGKeyArray | None = None,
        regularizer: AbstractRegularizer | None = None,
        kl_weight: Float[ArrayLike, ""] = 1.0,
        reg_weight: Float[ArrayLike, ""] = 0.0,
    ) -> tuple[Float[Array, ""], dict]:
        """`(loss, aux)`: the batch means of the masked Gaussian NLL plus
        `kl_weight` times the KL, plus `reg_weight` times the regularization. `aux`
        holds `nll`, `kl`, `mse` (batch mean of the masked MSE), `stats` and
        `state`."""
        pred, (mean, logstd), state, stats = self(
            times, values, mask, state, key=key, regularizer=regularizer
        )
        nll = jnp.mean(self.gaussian_nll(pred, values, mask, self.obs_std))
        kl = jnp.mean(self.kl_normal(mean, logstd))
        loss = nll + kl_weight * kl + reg_weight * stats.regularization
        mse = jnp.mean(self.masked_mse(pred, values, mask))
        return loss, dict(nll=nll, kl=kl, mse=mse, stats=stats, state=state)
