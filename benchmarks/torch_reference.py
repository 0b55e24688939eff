"""A PyTorch + torchdiffeq reference of tadiffeq's unmixed Neural ODE classifiers,
for the speed comparison in `bench_vs_torch.py`.

The layers follow the paper authors' released PyTorch code: the time enters each
layer as an extra input channel (`torch.cat([t, x])`, as in torchdiffeq's examples),
and the TA-BN layer reads the solver time with `t.item()` at every function
evaluation and, in training mode, updates its running statistics right there, in
Python. Every evaluation counts: the initial step-size heuristic's, those of rejected
steps and, with `odeint_adjoint`, those of the backward solve too. (tadiffeq updates
only at the stages of accepted steps; in training mode the output does not depend on
the running statistics, so the two agree on the trajectory.)

`TABatchNorm` here uses the paper's interpolation weights (the nearer grid point
weighs more), the same as tadiffeq, so that identical weights give identical outputs.
The authors' code swaps the two weights; `swap_weights=True` reproduces that.

`copy_from_jax` copies a tadiffeq `UnmixedClassifier` (and its state) into the
matching torch model. torch is only needed by the benchmarks, never by the library.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchdiffeq


# ----------------------------------------------------------------------------------
# Layers


class TABatchNorm(nn.Module):
    """Temporal Adaptive BatchNorm as in the paper authors' PyTorch code: M + 1 grid
    points on [t0, t1], each with a running mean/variance and an affine weight/bias,
    linear interpolation between the two grid points around t, updated per function
    evaluation in Python.

    With `swap_weights=False` (default) the nearer grid point gets the larger weight
    (the paper's Eq. 7, and tadiffeq); `True` swaps the two weights as the released
    code does.
    """

    def __init__(
        self,
        num_features,
        *,
        t0=0.0,
        t1=1.0,
        num_intervals=100,
        momentum=0.1,
        eps=1e-5,
        swap_weights=False,
    ):
        super().__init__()
        self.num_features = num_features
        self.t0, self.t1, self.num_intervals = float(t0), float(t1), num_intervals
        self.momentum, self.eps, self.swap_weights = momentum, eps, swap_weights
        shape = (num_intervals + 1, num_features)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.register_buffer("running_mean", torch.zeros(shape))
        self.register_buffer("running_var", torch.ones(shape))

    def _neighbours(self, t):
        h = (self.t1 - self.t0) / self.num_intervals
        s = (t.item() - self.t0) / h  # a host sync per evaluation, as the original
        s = min(max(s, 0.0), float(self.num_intervals))
        left = min(int(math.floor(s)), self.num_intervals - 1)
        w_right = s - left
        w_left = 1.0 - w_right
        if self.swap_weights:
            w_left, w_right = w_right, w_left
        return left, w_left, w_right

    def forward(self, t, x):
        left, wl, wr = self._neighbours(t)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        gamma = wl * self.weight[left] + wr * self.weight[left + 1]
        beta = wl * self.bias[left] + wr * self.bias[left + 1]
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            with torch.no_grad():
                n = x.numel() // x.shape[1]
                unbiased = var * (n / (n - 1))
                for k, w in ((left, wl), (left + 1, wr)):
                    rate = self.momentum * w
                    self.running_mean[k] += rate * (mean - self.running_mean[k])
                    self.running_var[k] += rate * (unbiased - self.running_var[k])
        else:
            mean = wl * self.running_mean[left] + wr * self.running_mean[left + 1]
            var = wl * self.running_var[left] + wr * self.running_var[left + 1]
        scale = gamma * torch.rsqrt(var + self.eps)
        shift = beta - mean * scale
        return x * scale.view(shape) + shift.view(shape)


class MiniBatchNorm(nn.Module):
    """Batch statistics in training and at test time; time-independent affine."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, t, x):
        return F.batch_norm(
            x, None, None, self.weight, self.bias, training=True, eps=self.eps
        )


class NoNorm(nn.Module):
    def forward(self, t, x):
        return x


def make_norm(name, num_features, **kw):
    if name == "tabn":
        return TABatchNorm(num_features, **kw)
    if name == "minibatch":
        return MiniBatchNorm(num_features)
    if name == "none":
        return NoNorm()
    raise ValueError(f"Unknown norm {name!r} (torch reference: tabn, minibatch, none).")


class TimeConv2d(nn.Module):
    """3x3 conv of `cat([t, x])` (time as the first input channel, zero padding 1);
    mode "same", "down" (stride 2) or "up" (stride-2 transposed conv)."""

    def __init__(self, cin, cout, mode="same"):
        super().__init__()
        self.mode = mode
        if mode == "up":
            self.conv = nn.ConvTranspose2d(
                cin + 1, cout, 3, stride=2, padding=1, output_padding=1
            )
        else:
            stride = 2 if mode == "down" else 1
            self.conv = nn.Conv2d(cin + 1, cout, 3, stride=stride, padding=1)

    def forward(self, t, x):
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], 1))


class TimeConvBlock(nn.Module):
    def __init__(self, cin, cout, mode, norm, activation=True, norm_kwargs=None):
        super().__init__()
        self.conv = TimeConv2d(cin, cout, mode)
        self.norm = None if norm is None else make_norm(norm, cout, **norm_kwargs)
        self.activation = activation

    def forward(self, t, x):
        h = self.conv(t, x)
        if self.norm is not None:
            h = self.norm(t, h)
        return F.relu(h) if self.activation else h


CONV6_SPEC = [
    (32, "same"), (64, "down"), (128, "down"), (64, "up"), (32, "up"), (None, "same")
]  # fmt: skip


class ConvField(nn.Module):
    """The 6-conv field: C->32, 32->64 down, 64->128 down, 128->64 up, 64->32 up,
    32->C; conv -> norm -> ReLU except the last (a bare conv)."""

    def __init__(self, channels, norm="tabn", norm_kwargs=None):
        super().__init__()
        blocks, cin = [], channels
        for i, (cout, mode) in enumerate(CONV6_SPEC):
            last = i == len(CONV6_SPEC) - 1
            cout = channels if cout is None else cout
            blocks.append(
                TimeConvBlock(
                    cin, cout, mode, None if last else norm, not last, norm_kwargs
                )
            )
            cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, t, y):
        for block in self.blocks:
            y = block(t, y)
        return y


class UNetField(nn.Module):
    """The 18-conv U-Net field (widths 32, 64, 128, 256), as tadiffeq's UNetField."""

    def __init__(self, channels, widths=(32, 64, 128, 256), norm="tabn", nk=None):
        super().__init__()
        self.down = nn.ModuleList()
        cin = channels
        for width in widths:
            self.down.append(
                nn.ModuleList(
                    [
                        TimeConvBlock(cin, width, "same", norm, True, nk),
                        TimeConvBlock(width, width, "same", norm, True, nk),
                    ]
                )
            )
            cin = width
        self.up = nn.ModuleList()
        for deep, shallow in zip(widths[::-1][:-1], widths[::-1][1:]):
            self.up.append(
                nn.ModuleList(
                    [
                        TimeConvBlock(deep, shallow, "up", norm, True, nk),
                        TimeConvBlock(2 * shallow, shallow, "same", norm, True, nk),
                        TimeConvBlock(shallow, shallow, "same", norm, True, nk),
                    ]
                )
            )
        self.final = TimeConvBlock(widths[0], channels, "same", None, False, nk)

    def forward(self, t, y):
        skips, h = [], y
        for i, (first, second) in enumerate(self.down):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = second(t, first(t, h))
            skips.append(h)
        skips.pop()
        for (upconv, first, second), skip in zip(self.up, reversed(skips)):
            h = torch.cat([upconv(t, h), skip], 1)
            h = second(t, first(t, h))
        return self.final(t, h)


class TimeLinear(nn.Module):
    def __init__(self, fin, fout):
        super().__init__()
        self.linear = nn.Linear(fin + 1, fout)

    def forward(self, t, x):
        return self.linear(torch.cat([torch.ones_like(x[:, :1]) * t, x], 1))


class MLPField(nn.Module):
    """TimeLinear -> norm -> ReLU per hidden layer, then TimeLinear back to D."""

    def __init__(self, features, hidden=(64,), norm="tabn", norm_kwargs=None):
        super().__init__()
        widths = [features, *hidden, features]
        self.layers = nn.ModuleList(
            TimeLinear(a, b) for a, b in zip(widths[:-1], widths[1:])
        )
        self.norms = nn.ModuleList(make_norm(norm, w, **norm_kwargs) for w in hidden)

    def forward(self, t, y):
        h = y
        for layer, norm in zip(self.layers[:-1], self.norms):
            h = F.relu(norm(t, layer(t, h)))
        return self.layers[-1](t, h)


class ODEFunc(nn.Module):
    """The vector field as torchdiffeq calls it, counting evaluations."""

    def __init__(self, field):
        super().__init__()
        self.field = field
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.field(t, y)


class UnmixedClassifier(nn.Module):
    """image -> Neural ODE -> BatchNorm1d -> dropout -> linear (the paper's unmixed
    classifier). `adjoint=True` uses `odeint_adjoint` (the paper), else `odeint`
    (backprop through the solver's operations)."""

    def __init__(
        self,
        field,
        features,
        num_classes=10,
        *,
        flatten_input=False,
        rtol=1e-3,
        atol=1e-3,
        t0=0.0,
        t1=1.0,
        adjoint=True,
        land_on_t1=True,
        dropout=0.0,
    ):
        super().__init__()
        self.func = ODEFunc(field)
        self.head_norm = nn.BatchNorm1d(features)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(features, num_classes)
        self.flatten_input = flatten_input
        self.rtol, self.atol, self.adjoint = rtol, atol, adjoint
        self.register_buffer("t", torch.tensor([t0, t1]))
        # torchdiffeq steps past t1 and interpolates back; diffrax clips the last
        # step to end on t1. step_t=[t1] makes torchdiffeq clip it too. (A buffer,
        # so that `.to(device)` moves it with the model.)
        self.register_buffer("step_t", torch.tensor([t1]) if land_on_t1 else None)

    def forward(self, x):
        y0 = x.flatten(1) if self.flatten_input else x
        solve = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
        kw = dict(rtol=self.rtol, atol=self.atol, method="dopri5")
        if self.step_t is not None:
            kw["options"] = dict(step_t=self.step_t)
        y1 = solve(self.func, y0, self.t, **kw)[-1]
        return self.linear(self.dropout(self.head_norm(y1.flatten(1))))


def build(model, *, norm="tabn", hidden=64, num_classes=10, **kw):
    """The torch classifier for `model` in {"conv6", "unet", "mlp"}; `kw` go to
    `UnmixedClassifier` (rtol, atol, adjoint, land_on_t1, ...)."""
    nk = dict(num_intervals=kw.pop("num_intervals", 100))
    nk["swap_weights"] = kw.pop("swap_weights", False)
    if norm != "tabn":
        nk = {}
    if model == "conv6":
        return UnmixedClassifier(ConvField(3, norm, nk), 3 * 32 * 32, num_classes, **kw)
    if model == "unet":
        field = UNetField(3, norm=norm, nk=nk)
        return UnmixedClassifier(field, 3 * 32 * 32, num_classes, **kw)
    if model == "mlp":
        field = MLPField(784, (hidden,), norm, nk)
        return UnmixedClassifier(field, 784, num_classes, flatten_input=True, **kw)
    raise ValueError(f"Unknown model {model!r}.")


# ----------------------------------------------------------------------------------
# Weight copy from tadiffeq


def _t(a):
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _time_first(w, axis):
    """Moves the time channel from last (tadiffeq) to first (torch reference)."""
    return np.concatenate(
        [np.take(w, [-1], axis=axis), np.take(w, range(w.shape[axis] - 1), axis=axis)],
        axis=axis,
    )


def _copy_conv(jconv, tconv: TimeConv2d):
    w = np.asarray(jconv.weight)  # (3, 3, cin + 1, cout), HWIO, time channel last
    if jconv.mode == "up":
        # tadiffeq: correlate the 2x-dilated input with w. ConvTranspose2d with
        # weight W (in, out, 3, 3) correlates it with W flipped in space.
        tw = _time_first(np.transpose(w[::-1, ::-1], (2, 3, 0, 1)), 0)
    else:
        tw = _time_first(np.transpose(w, (3, 2, 0, 1)), 1)
    tconv.conv.weight.data.copy_(_t(tw))
    tconv.conv.bias.data.copy_(_t(jconv.bias))


def _copy_norm(jnorm, tnorm, state):
    if isinstance(tnorm, NoNorm):
        return
    tnorm.weight.data.copy_(_t(jnorm.weight))
    tnorm.bias.data.copy_(_t(jnorm.bias))
    if isinstance(tnorm, TABatchNorm):
        mean, var = state.get(jnorm.state_index)
        tnorm.running_mean.copy_(_t(mean))
        tnorm.running_var.copy_(_t(var))


def _copy_block(jblock, tblock, state):
    _copy_conv(jblock.conv, tblock.conv)
    if jblock.norm is not None:
        _copy_norm(jblock.norm, tblock.norm, state)


def copy_from_jax(jmodel, state, tmodel: UnmixedClassifier) -> UnmixedClassifier:
    """Copies the parameters and running statistics of a tadiffeq
    `UnmixedClassifier` (with its `state`) into `tmodel`, in place."""
    jfield, tfield = jmodel.ode.field, tmodel.func.field
    with torch.no_grad():
        if isinstance(tfield, ConvField):
            for jb, tb in zip(jfield.blocks, tfield.blocks, strict=True):
                _copy_block(jb, tb, state)
        elif isinstance(tfield, UNetField):
            for jpair, tpair in zip(jfield.down, tfield.down, strict=True):
                for jb, tb in zip(jpair, tpair, strict=True):
                    _copy_block(jb, tb, state)
            for jtrip, ttrip in zip(jfield.up, tfield.up, strict=True):
                for jb, tb in zip(jtrip, ttrip, strict=True):
                    _copy_block(jb, tb, state)
            _copy_block(jfield.final, tfield.final, state)
        else:
            for jl, tl in zip(jfield.layers, tfield.layers, strict=True):
                w = np.asarray(jl.weight)  # (in + 1, out), time row last
                tl.linear.weight.data.copy_(_t(_time_first(w, 0).T))
                tl.linear.bias.data.copy_(_t(jl.bias))
            for jn, tn in zip(jfield.norms, tfield.norms, strict=True):
                _copy_norm(jn, tn, state)
        # The head: tadiffeq flattens (H, W, C), torch (C, H, W).
        h, w, c = jmodel.image_shape
        perm = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
        if tmodel.flatten_input:
            perm = np.arange(h * w * c)
        hn = jmodel.head_norm
        mean, var = state.get(hn.state_index)
        tmodel.head_norm.weight.copy_(_t(np.asarray(hn.weight)[perm]))
        tmodel.head_norm.bias.copy_(_t(np.asarray(hn.bias)[perm]))
        tmodel.head_norm.running_mean.copy_(_t(np.asarray(mean)[perm]))
        tmodel.head_norm.running_var.copy_(_t(np.asarray(var)[perm]))
        tmodel.linear.weight.copy_(_t(np.asarray(jmodel.linear.weight)[:, perm]))
        tmodel.linear.bias.copy_(_t(jmodel.linear.bias))
    return tmodel


def to_torch_images(x: np.ndarray, model: str) -> torch.Tensor:
    """Channels-last numpy images -> the torch reference's input layout (NCHW)."""
    return _t(np.transpose(np.asarray(x), (0, 3, 1, 2)))
