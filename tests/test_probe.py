"""The bad-input probe (benchmarks/probe_bad_inputs.py) runs and classifies."""

import json

from benchmarks import probe_bad_inputs as probe


def test_probe_classifies_each_outcome(tmp_path):
    """A small slice of the probe, end to end in its worker process: every bad STEER
    argument is answered with an error naming it (the full run's figures
    are in docs/design.md)."""
    summary = probe.main(["--only", "STEER", "--timeout", "60", "--out",
                          str(tmp_path / "steer.json")])  # fmt: skip
    total = summary[-1]
    assert total["family"] == "all" and total["tried"] == 4  # nan, inf, -1.0, "1.0"
    assert total["clear"] == total["tried"]
    rows = json.loads((tmp_path / "steer.json").read_text())["rows"]
    assert {r["value"] for r in rows} == {"nan", "inf", "-1.0", '"1.0"'}
    assert all("STEER: `b`" in r["message"] for r in rows)


def test_probe_outcomes_are_told_apart():
    """`classify` on hand-made probes: a named error, an anonymous one, a silent
    acceptance and a non-finite result."""

    def raise_(e):
        raise e

    make = lambda run: probe.Probe("argument", "api", "width", "0", run)
    assert probe.classify(make(lambda: raise_(ValueError("`width` bad"))))[0] == "clear"
    assert probe.classify(make(lambda: raise_(TypeError("bad"))))[0] == "unclear"
    assert probe.classify(make(lambda: 3))[0] == "silent"
    out = probe.classify(make(lambda: float("nan")))
    assert out == ("silent", "accepted")  # a Python float is not an array result
    import jax.numpy as jnp

    assert probe.classify(make(lambda: jnp.array([jnp.nan]))) == (
        "silent",
        "non-finite result",
    )
