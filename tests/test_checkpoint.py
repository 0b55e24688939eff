import os
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tadiffeq as td


def test_checkpoint_roundtrip_with_tabn_state_and_optimizer(tmp_path, getkey):
    def build(key):
        return td.NeuralODE(td.MLPField(3, (8,), norm="tabn", key=key))

    node, state = eqx.nn.make_with_state(build)(getkey())
    _, state, _ = node(jax.random.normal(getkey(), (6, 3)), state)
    opt = optax.adam(1e-3)
    opt_state = opt.init(eqx.filter(node, eqx.is_inexact_array))
    ckpt = td.Checkpointer(tmp_path / "run")
    assert ckpt.restore((node, opt_state, state)) is None
    ckpt.save(7, (node, opt_state, state), {"loss": [1.0, 0.5]})
    assert not list((tmp_path / "run").glob("*.tmp"))  # renamed into place
    fresh, fresh_state = eqx.nn.make_with_state(build)(getkey())
    fresh_opt = opt.init(eqx.filter(fresh, eqx.is_inexact_array))
    step, (n2, o2, s2), meta = ckpt.restore((fresh, fresh_opt, fresh_state))
    assert step == 7 and meta == {"loss": [1.0, 0.5]}
    for a, b in zip(
        jax.tree.leaves((node, opt_state, state)), jax.tree.leaves((n2, o2, s2))
    ):
        np.testing.assert_array_equal(a, b)
    rm = s2.get(n2.field.norms[0].state_index)[0]
    assert float(jnp.abs(rm).max()) > 0  # TA-BN statistics survived


def test_checkpoint_interrupted_save_keeps_previous_and_prunes(tmp_path):
    ckpt = td.Checkpointer(tmp_path, keep=2)
    like = {"w": jnp.zeros(3)}
    for step in (1, 2, 3):
        ckpt.save(step, {"w": jnp.full(3, float(step))}, {"step": step})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_2", "step_3"]
    # A save that dies after writing its arrays but before the commit point.
    (tmp_path / "step_4.tmp").mkdir()
    eqx.tree_serialise_leaves(
        tmp_path / "step_4.tmp" / "arrays.eqx", {"w": jnp.ones(3)}
    )
    step, tree, meta = ckpt.restore(like)
    assert step == 3 and meta == {"step": 3}
    assert ckpt.latest() == (3, {"step": 3})
    np.testing.assert_array_equal(tree["w"], np.full(3, 3.0))
    ckpt.save(4, {"w": jnp.full(3, 4.0)})  # the next save overwrites the debris
    assert ckpt.restore(like)[0] == 4


def test_checkpoint_unfinished_resave_is_not_a_checkpoint(tmp_path):
    # `step_<n>_r<k>.tmp` is a re-save that died before its rename: whatever it
    # holds, it is never restored (it used to parse as step n).
    ckpt = td.Checkpointer(tmp_path, keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, {"w": jnp.full(3, float(step))})
    shutil.copytree(tmp_path / "step_3", tmp_path / "step_5_r1.tmp")
    (tmp_path / "latest.json").unlink()
    with pytest.warns(UserWarning, match=r"Using \S*step_3 instead"):
        assert ckpt.restore({"w": jnp.zeros(3)})[0] == 3


def test_checkpoint_rewound_run_supersedes_later_steps(tmp_path):
    # A run that restarts at a lower step: the old run's later checkpoints are
    # removed (with a warning), so the fallback after a damaged pointer is the
    # rewound run's newest, never the stale step 10.
    ckpt = td.Checkpointer(tmp_path, keep=2)
    like = {"w": jnp.zeros(3)}
    for step in (8, 10):
        ckpt.save(step, {"w": jnp.full(3, float(step))})
    with pytest.warns(UserWarning, match=r"later steps \[8, 10\] .*: removed them"):
        ckpt.save(1, {"w": jnp.full(3, 1.0)})
    ckpt.save(2, {"w": jnp.full(3, 2.0)})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_1", "step_2"]
    (tmp_path / "latest.json").unlink()
    with pytest.warns(UserWarning, match="Using .*step_2 instead"):
        assert ckpt.restore(like)[0] == 2


def test_checkpoint_rejects_bad_keep(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        td.Checkpointer(tmp_path, keep=0)


def test_checkpoint_resaving_a_step_is_atomic_too(tmp_path, monkeypatch):
    ckpt = td.Checkpointer(tmp_path, keep=2)
    like = {"w": jnp.zeros(3)}
    ckpt.save(5, {"w": jnp.full(3, 5.0)}, {"n": 1})
    real_replace = os.replace
    for fail_at in (1, 2):  # the folder's rename, then the commit point
        calls = []

        def dying_replace(src, dst, fail_at=fail_at, calls=calls):
            calls.append(src)
            if len(calls) == fail_at:
                raise KeyboardInterrupt
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", dying_replace)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save(5, {"w": jnp.full(3, -1.0)}, {"n": 2})
        monkeypatch.setattr(os, "replace", real_replace)
        step, tree, meta = ckpt.restore(like)  # the first save, intact
        assert (step, meta) == (5, {"n": 1})
        np.testing.assert_array_equal(tree["w"], np.full(3, 5.0))
    ckpt.save(5, {"w": jnp.full(3, 7.0)}, {"n": 3})
    step, tree, meta = ckpt.restore(like)
    assert (step, meta) == (5, {"n": 3})
    np.testing.assert_array_equal(tree["w"], np.full(3, 7.0))
    ckpt.save(6, {"w": jnp.full(3, 6.0)})
    # One folder per step, the newest `keep` steps.
    dirs = [p for p in tmp_path.glob("step_*") if not p.name.endswith(".tmp")]
    # (a re-saved step gets a new folder name, step_<n>_r<k>)
    assert sorted(int(p.name.split("_")[1]) for p in dirs) == [5, 6]


def _three_steps(tmp_path):
    ckpt = td.Checkpointer(tmp_path, keep=3)
    for step in (1, 2, 3):
        ckpt.save(step, {"w": jnp.full(3, float(step))}, {"step": step})
    return ckpt, {"w": jnp.zeros(3)}


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last array's values
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "fault, restored",
    [
        (lambda d: _truncate(d / "step_3" / "arrays.eqx"), 2),
        (lambda d: _flip(d / "step_3" / "arrays.eqx"), 2),
        (lambda d: (d / "step_3" / "arrays.eqx").unlink(), 2),
        (lambda d: _truncate(d / "step_3" / "meta.json"), 2),
        (lambda d: (d / "latest.json").write_text(""), 3),
        (lambda d: (d / "latest.json").unlink(), 3),
        (lambda d: (d / "latest.json").write_text('{"checkpoint": "step_9"}'), 3),
    ],
    ids=["truncated", "flipped", "arrays-gone", "meta", "empty-pointer",
         "no-pointer", "dangling-pointer"],
)  # fmt: skip
def test_checkpoint_faults_restore_the_newest_intact_with_a_warning(
    tmp_path, fault, restored
):
    ckpt, like = _three_steps(tmp_path)
    fault(tmp_path)
    with pytest.warns(UserWarning, match=f"Using .*step_{restored} instead"):
        step, tree, meta = ckpt.restore(like)
    assert (step, meta) == (restored, {"step": restored})
    np.testing.assert_array_equal(tree["w"], np.full(3, float(restored)))
    assert ckpt.exists()
    # Nothing was deleted.
    assert {p.name for p in tmp_path.glob("step_*")} == {"step_1", "step_2", "step_3"}


def test_checkpoint_with_nothing_intact_refuses_and_keeps_the_files(tmp_path):
    ckpt, like = _three_steps(tmp_path)
    for step in (1, 2, 3):
        _flip(tmp_path / f"step_{step}" / "arrays.eqx")
    (tmp_path / "latest.json").unlink()
    with pytest.raises(
        ValueError, match="No intact checkpoint.*latest.json is missing"
    ):
        ckpt.restore(like)
    assert len(list(tmp_path.glob("step_*"))) == 3


def test_checkpoint_like_of_another_structure_is_an_error_not_damage(tmp_path):
    ckpt, _ = _three_steps(tmp_path)
    with pytest.raises(ValueError, match="holds 1 arrays, fewer than the 2"):
        ckpt.restore({"w": jnp.zeros(3), "x": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"array 0 \(\['w'\]\) was saved with shape"):
        ckpt.restore({"w": jnp.zeros(4)})
    with pytest.raises(ValueError, match="holds 1 arrays, more than the 0"):
        ckpt.restore({})


def test_checkpoint_keep_is_checked_before_any_save(tmp_path):
    # (The test suite's type-checking hook may answer first, with a TypeError.)
    for keep in (1.5, True, "2"):
        with pytest.raises((ValueError, TypeError), match="keep"):
            td.Checkpointer(tmp_path / "run", keep=keep)
    assert not (tmp_path / "run").exists()
