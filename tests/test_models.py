import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tadiffeq as td


def _conv_params(spec):
    return sum(9 * (cin + 1) * cout + cout for cin, cout, _ in spec)


@pytest.mark.parametrize("depth", [4, 6, 8, 10, 12])
def test_conv_field_layers_and_shapes(depth, getkey):
    field, state = eqx.nn.make_with_state(td.ConvField)(
        3, depth, norm="popti", key=getkey()
    )
    spec = td.conv_field_spec(3, depth)
    assert len(field.blocks) == depth == len(spec)
    assert [
        (b.conv.in_channels, b.conv.out_channels, b.conv.mode) for b in field.blocks
    ] == spec
    # Every layer, the last included, is conv -> norm -> ReLU (the authors' field).
    assert all(b.norm is not None and b.activation for b in field.blocks)
    n_norm = sum(2 * cout for _, cout, _ in spec)
    assert td.count_parameters(field) == _conv_params(spec) + n_norm
    # tadiffeq 0.1's field: the last layer a bare conv.
    bare = td.ConvField(3, depth, norm="popti", bare_last=True, key=getkey())
    assert all(b.norm is not None and b.activation for b in bare.blocks[:-1])
    assert bare.blocks[-1].norm is None and not bare.blocks[-1].activation
    assert td.count_parameters(bare) == _conv_params(spec) + n_norm - 2 * 3
    y = jax.random.normal(getkey(), (2, 16, 16, 3))
    dy, _ = field(0.5, y, state)
    assert dy.shape == y.shape


def test_conv_field_specs_match_the_paper():
    assert td.conv_field_spec(3, 4) == [
        (3, 32, "down"), (32, 64, "down"), (64, 32, "up"), (32, 3, "up")
    ]  # fmt: skip
    assert [m for _, _, m in td.conv_field_spec(1, 6)] == [
        "same", "down", "down", "up", "up", "same"
    ]  # fmt: skip
    spec12 = td.conv_field_spec(3, 12)
    assert spec12[4:8] == [(256, 256, "same")] * 4
    assert spec12[:4] == td.conv_field_spec(3, 8)[:4]
    # `width` scales the hidden channels only.
    assert td.conv_field_spec(1, 8, width=8) == [
        (1, 8, "same"), (8, 16, "down"), (16, 32, "down"), (32, 64, "down"),
        (64, 32, "up"), (32, 16, "up"), (16, 8, "up"), (8, 1, "same"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="`width` must be a positive integer"):
        td.conv_field_spec(3, 6, width=0)


def test_unet_has_18_convs_and_skip_connections(getkey):
    field, state = eqx.nn.make_with_state(td.UNetField)(3, norm="popti", key=getkey())
    blocks = [b for level in field.down for b in level]
    blocks += [b for level in field.up for b in level] + [field.final]
    assert len(blocks) == 18
    # The first decoder conv of each level sees the up-sampled map and the skip.
    assert [lvl[1].conv.in_channels for lvl in field.up] == [256, 128, 64]
    assert [lvl[0].conv.mode for lvl in field.up] == ["up"] * 3
    # The final conv has a normalisation and no ReLU (the authors' UNetFinal).
    assert field.final.conv.out_channels == 3
    assert field.final.norm is not None and not field.final.activation
    bare = td.UNetField(3, norm="popti", bare_last=True, key=getkey())
    assert bare.final.norm is None and not bare.final.activation
    y = jax.random.normal(getkey(), (2, 16, 16, 3))
    dy, _ = field(0.1, y, state)
    assert dy.shape == y.shape


def test_unmixed_unet_classifier_parameter_count(getkey):
    """The paper's "2.2M parameters" is the U-Net unmixed model on CIFAR-10 counted
    with one affine per BN layer; TA-BN's 101-point affine grids add 326,400."""

    def build(key):
        k1, k2 = jax.random.split(key)
        node = td.NeuralODE(td.UNetField(3, key=k1))
        return td.UnmixedClassifier(node, (32, 32, 3), 10, key=k2)

    model, _ = eqx.nn.make_with_state(build)(getkey())
    without = td.count_parameters(model, grid_affine=False)
    with_grid = td.count_parameters(model)
    assert 2.15e6 < without < 2.25e6
    channels = 2 * (32 + 64 + 128 + 256) + (128 * 3 + 64 * 3 + 32 * 3) + 3
    assert with_grid - without == 2 * 100 * channels


# The authors' models (shelljane/tabn-neuralode, net.py and norm.py: CIFAR-10,
# 3x32x32, 10 classes), their parameter counts by normalisation, derived from their
# layer definitions (PyTorch conv and linear biases included; BatchNorm2d(3) head;
# TA-BN with 100 grid points, mini-batch and Pop-TI BN one affine per layer).
AUTHORS_COUNTS = {
    "conv4": (70_638, 70_900, 96_838),
    "conv6": (220_014, 220_660, 284_614),
    "conv8": (813_678, 815_092, 955_078),
    "conv10": (1_998_446, 2_000_884, 2_242_246),
    "conv12": (3_183_214, 3_186_676, 3_529_414),
    "unet": (2_186_926, 2_190_196, 2_513_926),
}


@pytest.mark.parametrize("field", sorted(AUTHORS_COUNTS))
def test_parameter_counts_match_the_authors_models(field, getkey):
    def build(norm, key):
        k1, k2 = jax.random.split(key)
        if field == "unet":
            f = td.UNetField(3, norm=norm, key=k1)
        else:
            f = td.ConvField(3, int(field[4:]), norm=norm, key=k1)
        return td.UnmixedClassifier(td.NeuralODE(f), (32, 32, 3), 10, key=k2)

    none, minibatch_popti, tabn = AUTHORS_COUNTS[field]
    counts = {
        norm: td.count_parameters(eqx.nn.make_with_state(build)(norm, getkey())[0])
        for norm in ("none", "minibatch", "popti")
    }
    assert counts == {
        "none": none,
        "minibatch": minibatch_popti,
        "popti": minibatch_popti,
    }
    # TA-BN: the library's grid has M + 1 = 101 points (both ends) where the
    # authors' has 100 (0, 0.01, ..., 0.99): one more affine pair per channel.
    model, _ = eqx.nn.make_with_state(build)("tabn", getkey())
    channels = sum(n.num_features for n in td.norm_layers(model.ode))
    assert td.count_parameters(model) == tabn + 2 * channels


def test_mlp_field_time_concatenation(getkey):
    lin = td.TimeLinear(3, 2, key=getkey())
    x = jax.random.normal(getkey(), (4, 3))
    xt = jnp.concatenate([x, jnp.full((4, 1), 0.3)], -1)
    np.testing.assert_allclose(
        lin(0.3, x), xt @ lin.weight + lin.bias, rtol=1e-6, atol=1e-6
    )
    field, state = eqx.nn.make_with_state(td.MLPField)(
        5, (7, 9), norm="tabn", norm_layers=1, key=getkey()
    )
    assert [layer.in_features for layer in field.layers] == [5, 7, 9]
    assert field.norms[0] is not None and field.norms[1] is None
    img = jax.random.normal(getkey(), (2, 5, 1))
    y = field.lift(img)
    assert y.shape == (2, 5)
    dy, _ = field(0.2, y, state)
    assert dy.shape == (2, 5)


def test_heavy_ball_dynamics(getkey):
    inner = td.MLPField(3, (8,), norm="none", key=getkey())
    hb = td.HeavyBallField(inner, 3, gamma=0.7)
    state = eqx.nn.State(hb)
    x = jax.random.normal(getkey(), (2, 3))
    y0 = hb.lift(x)
    np.testing.assert_array_equal(y0, jnp.concatenate([x, jnp.zeros_like(x)], -1))
    y = jax.random.normal(getkey(), (2, 6))
    dy, _ = hb(0.4, y, state)
    h, m = y[:, :3], y[:, 3:]
    f, _ = inner(0.4, h, state)
    np.testing.assert_allclose(dy[:, :3], m)
    np.testing.assert_allclose(dy[:, 3:], f - jax.nn.sigmoid(0.7) * m, rtol=1e-6)
    np.testing.assert_array_equal(hb.readout(y), h)
    # gamma is learnable.
    g = eqx.filter_grad(lambda hb: jnp.sum(hb(0.4, y, state)[0] ** 2))(hb)
    assert float(jnp.abs(g.gamma)) > 0


def test_second_order_dynamics(getkey):
    inner = td.MLPField(6, (8,), out_features=3, norm="none", key=getkey())
    so = td.SecondOrderField(inner, 3)
    state = eqx.nn.State(so)
    y = jax.random.normal(getkey(), (2, 6))
    dy, _ = so(0.4, y, state)
    acc, _ = inner(0.4, y, state)
    np.testing.assert_allclose(dy[:, :3], y[:, 3:])
    np.testing.assert_allclose(dy[:, 3:], acc)
    bad = td.SecondOrderField(td.MLPField(6, (8,), norm="none", key=getkey()), 3)
    with pytest.raises(ValueError, match="must return 3 channels"):
        bad(0.4, y, state)


@pytest.mark.parametrize("variant", ["aug", "hb", "so"])
def test_variants_train_in_a_neural_ode(variant, getkey):
    c = 4
    if variant == "aug":
        field = td.AugmentedField(td.MLPField(c + 2, (16,), key=getkey()), 2)
        out_dim = c + 2
    elif variant == "hb":
        field = td.HeavyBallField(td.MLPField(c, (16,), key=getkey()), c)
        out_dim = c
    else:
        inner = td.MLPField(2 * c, (16,), out_features=c, key=getkey())
        field = td.SecondOrderField(inner, c)
        out_dim = c
    node, state = eqx.nn.make_with_state(td.NeuralODE)(field)
    x = jax.random.normal(getkey(), (8, c))
    y, state, _ = eqx.filter_jit(node)(x, state)
    assert y.shape == (8, out_dim)
    if variant == "aug":
        assert float(jnp.abs(field.lift(x)[:, c:]).max()) == 0.0
    grads = eqx.filter_grad(lambda n: jnp.sum(n(x, td.clone_state(state))[0] ** 2))(
        node
    )
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_conv_variants_stack_channels(getkey):
    inner = td.ConvField(2, 4, out_channels=1, norm="popti", key=getkey())
    so = td.SecondOrderField(inner, 1)
    node, state = eqx.nn.make_with_state(td.NeuralODE)(
        so, stepsize_controller=dfx.ConstantStepSize(), dt0=0.5
    )
    y, _, _ = node(jax.random.normal(getkey(), (2, 8, 8, 1)), state)
    assert y.shape == (2, 8, 8, 1)


def _classifier(norm, key, channels_first=False, field="conv"):
    def build(key):
        k1, k2 = jax.random.split(key)
        if field == "conv":
            f = td.ConvField(1, 4, norm=norm, key=k1)
        else:
            f = td.MLPField(64, (16,), norm=norm, key=k1)
        node = td.NeuralODE(f, stepsize_controller=dfx.ConstantStepSize(), dt0=0.25)
        return td.UnmixedClassifier(
            node, (8, 8, 1), 3, channels_first=channels_first, key=k2
        )

    return eqx.nn.make_with_state(build)(key)


@pytest.mark.parametrize("field", ["conv", "mlp"])
def test_classifier_layouts_and_batch_independence(field, getkey):
    key = getkey()
    last, state = _classifier("tabn", key, field=field)
    first, state_f = _classifier("tabn", key, channels_first=True, field=field)
    x = jax.random.normal(getkey(), (6, 8, 8, 1))
    k = getkey()
    a, _, _ = last(x, state, key=k)
    b, _, _ = first(jnp.transpose(x, (0, 3, 1, 2)), state_f, key=k)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert a.shape == (6, 3)
    inf = eqx.nn.inference_mode(last)
    full, _, _ = inf(x, state)
    one, _, _ = inf(x[:1], state)
    np.testing.assert_allclose(one, full[:1], rtol=1e-5, atol=1e-5)


def test_classifier_errors(getkey):
    model, state = _classifier("popti", getkey())
    with pytest.raises(ValueError, match=r"\(batch, 8, 8, 1\)"):
        model(jnp.ones((2, 1, 8, 8)), state)
    with pytest.raises(TypeError, match="floating point"):
        model(jnp.ones((2, 8, 8, 1), jnp.uint8), state)
    with pytest.raises(ValueError, match="num_classes"):
        td.UnmixedClassifier(model.ode, (8, 8, 1), 1, key=getkey())
    with pytest.raises(ValueError, match="`dropout`"):
        td.UnmixedClassifier(model.ode, (8, 8, 1), 10, dropout=1.5, key=getkey())


def test_field_errors(getkey):
    with pytest.raises(ValueError, match="`depth` must be one of"):
        td.ConvField(3, 5, key=getkey())
    with pytest.raises(ValueError, match="`norm` must be one of .*got 'bn'"):
        td.ConvField(3, 4, norm="bn", key=getkey())
    with pytest.raises(ValueError, match="`activation`"):
        td.MLPField(3, activation="swishy", key=getkey())
    with pytest.raises(ValueError, match=r"`norm_layers` must be in \[0, 1\]"):
        td.MLPField(3, (8,), norm_layers=2, key=getkey())
    with pytest.raises(ValueError, match="TimeLinear: `t` must be a scalar"):
        td.MLPField(3, (8,), norm="none", key=getkey())(
            jnp.ones(2), jnp.ones((2, 3)), eqx.nn.State(td.NoNorm(3))
        )
    inner = td.MLPField(3, (4,), out_features=1, norm="none", key=getkey())
    hb = td.HeavyBallField(inner, 3)
    with pytest.raises(ValueError, match="HeavyBallField: the inner field must return"):
        hb(0.1, jnp.ones((2, 6)), eqx.nn.State(hb))
    with pytest.raises(ValueError, match="HeavyBallField: `channels`"):
        td.HeavyBallField(inner, 0)
    with pytest.raises(ValueError, match="SecondOrderField: `channels`"):
        td.SecondOrderField(inner, -1)
    field, state = eqx.nn.make_with_state(td.ConvField)(3, 6, key=getkey())
    with pytest.raises(ValueError, match=r"channels-last \(batch, height, width, 3\)"):
        field(0.0, jnp.ones((2, 3, 16, 16)), state)
    with pytest.raises(ValueError, match="divisible by 4"):
        field(0.0, jnp.ones((2, 10, 16, 3)), state)
    unet, ustate = eqx.nn.make_with_state(td.UNetField)(1, key=getkey())
    with pytest.raises(ValueError, match="divisible by 8"):
        unet(0.0, jnp.ones((2, 12, 12, 1)), ustate)


def test_classifier_head_dtype(getkey):
    with jax.enable_x64(True):
        field = td.MLPField(16, (8,), norm="tabn", dtype=jnp.float64, key=getkey())
        node = td.NeuralODE(field)
        model, state = eqx.nn.make_with_state(td.UnmixedClassifier)(
            node, (4, 4, 1), 3, dtype=jnp.float64, key=getkey()
        )
        x = jax.random.normal(getkey(), (5, 4, 4, 1), jnp.float64)
        logits, state, _ = model(x, state, key=getkey())
        assert logits.dtype == model.linear.weight.dtype == jnp.float64
        stats = state.get(model.head_norm.state_index)
        assert {s.dtype for s in stats} == {jnp.dtype("float64")}


def test_classifier_head_statistics_per_channel_or_feature(getkey):
    def build(head_statistics, key):
        k1, k2 = jax.random.split(key)
        node = td.NeuralODE(td.ConvField(2, 4, width=4, norm="none", key=k1))
        return td.UnmixedClassifier(
            node, (8, 8, 2), 3, head_statistics=head_statistics, key=k2
        )

    x = jax.random.normal(getkey(), (5, 8, 8, 2)) * 3 + 1
    (chan, s_chan), (feat, s_feat) = (
        eqx.nn.make_with_state(build)(h, jax.random.PRNGKey(0))
        for h in ("channels", "features")
    )
    assert chan.head_norm.num_features == 2 and feat.head_norm.num_features == 128
    assert chan.num_features == feat.num_features == 128
    _, s_chan, _ = chan(x, s_chan, key=getkey())
    _, s_feat, _ = feat(x, s_feat, key=getkey())
    # The per-channel running mean is the mean of the per-feature ones (same ODE).
    m_chan, _ = s_chan.get(chan.head_norm.state_index)
    m_feat, _ = s_feat.get(feat.head_norm.state_index)
    np.testing.assert_allclose(
        m_chan, np.asarray(m_feat).reshape(64, 2).mean(0), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="head_statistics"):
        build("pixels", getkey())
