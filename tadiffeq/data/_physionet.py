"""PhysioNet Challenge 2012 ICU time series: a loader for the real per-patient files
and a generator that writes a synthetic dataset in the same file format."""

import json
import math
import os
import pathlib

import numpy as np

from .._misc import check_positive_int


#: The 37 time-varying parameters kept, in this order (the feature axis). They are
#: Rubanova et al. (2019)'s 41 PhysioNet parameters without the four static
#: descriptors `Age`, `Gender`, `Height` and `ICUType` (and without `RecordID`,
#: which is not a measurement). `Weight` stays: it is recorded at admission and
#: again over the stay, so it is a time series.
PHYSIONET_FEATURES: tuple[str, ...] = (
    "Weight", "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol",
    "Creatinine", "DiasABP", "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K",
    "Lactate", "Mg", "MAP", "MechVent", "Na", "NIDiasABP", "NIMAP", "NISysABP",
    "PaCO2", "PaO2", "pH", "Platelets", "RespRate", "SaO2", "SysABP", "Temp",
    "TroponinI", "TroponinT", "Urine", "WBC",
)  # fmt: skip
#: The lines a record holds besides the features; read and ignored.
PHYSIONET_DESCRIPTORS: tuple[str, ...] = (
    "RecordID", "Age", "Gender", "Height", "ICUType",
)  # fmt: skip
#: Every record covers the first 48 hours of an ICU stay; times are divided by this.
PHYSIONET_HOURS = 48.0

_INDEX = {name: i for i, name in enumerate(PHYSIONET_FEATURES)}
_HEADER = "Time,Parameter,Value"


def _parse_time(text: str, where: str) -> float:
    hours, sep, minutes = text.partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(f"{where}: the time must be 'HH:MM', got {text!r}.")
    if int(minutes) >= 60:
        raise ValueError(f"{where}: minutes must be below 60, got {text!r}.")
    return int(hours) + int(minutes) / 60.0


def read_physionet_record(
    path: str | os.PathLike,
    *,
    quantization: float | None = None,
    missing_value: float | None = -1.0,
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Reads one PhysioNet 2012 record, a CSV `RecordID.txt` with header
    `Time,Parameter,Value` and times `HH:MM` since ICU admission.

    **Arguments:**

    - `path`: the file.
    - `quantization`: round every time to a multiple of this many hours (Rubanova et
      al. used 0.1 h); `None` (default) keeps the minutes.
    - `missing_value`: a value meaning "unknown", dropped (default -1, the
      challenge's code, which also appears as `Weight` at 00:00); `None` keeps all.

    Several values of one parameter at one (rounded) time are averaged, as Rubanova
    et al. do.

    **Returns:** `(record_id, hours, values, mask)`: the distinct times in hours,
    increasing, shape `(T,)`; the raw values `(T, 37)` (0 where unobserved) and the
    0/1 mask `(T, 37)`, float64, features in `PHYSIONET_FEATURES` order. Times with
    only descriptors (e.g. the 00:00 header lines) are kept with an empty mask row.
    """
    path = pathlib.Path(path)
    if quantization is not None and not quantization > 0:
        raise ValueError(f"`quantization` must be positive, got {quantization}.")
    lines = path.read_text().splitlines()
    if not lines or lines[0].strip() != _HEADER:
        raise ValueError(f"{path}: the first line must be {_HEADER!r}.")
    record_id = None
    sums: dict[float, np.ndarray] = {}
    counts: dict[float, np.ndarray] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        parts = line.strip().split(",")
        if len(parts) != 3:
            raise ValueError(f"{where}: expected 'Time,Parameter,Value', got {line!r}.")
        time_text, name, value_text = parts
        hours = _parse_time(time_text, where)
        try:
            value = float(value_text)
        except ValueError:
            raise ValueError(
                f"{where}: the value {value_text!r} is not a number."
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"{where}: the value {value_text!r} is not finite.")
        if name == "RecordID":
            record_id = int(value)
        if quantization is not None:
            hours = round(hours / quantization) * quantization
        if hours not in sums:
            sums[hours] = np.zeros(len(PHYSIONET_FEATURES))
            counts[hours] = np.zeros(len(PHYSIONET_FEATURES))
        if name in PHYSIONET_DESCRIPTORS:
            continue
        if name not in _INDEX:
            raise ValueError(f"{where}: unknown parameter {name!r}.")
        if missing_value is not None and value == missing_value:
            continue
        sums[hours][_INDEX[name]] += value
        counts[hours][_INDEX[name]] += 1
    if record_id is None:
        record_id = int(path.stem) if path.stem.isdigit() else -1
    hours = np.array(sorted(sums), dtype=np.float64)
    count = np.stack([counts[h] for h in hours]) if len(hours) else np.zeros((0, 37))
    total = np.stack([sums[h] for h in hours]) if len(hours) else np.zeros((0, 37))
    mask = (count > 0).astype(np.float64)
    values = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return record_id, hours, values, mask


def physionet_files(path: str | os.PathLike) -> list[pathlib.Path]:
    """The record files under `path`: `*.txt` in its `set-a`, `set-b` and `set-c`
    folders where present, else in `path` itself; sorted by name."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"No PhysioNet directory {path}.")
    folders = [path / s for s in ("set-a", "set-b", "set-c") if (path / s).is_dir()]
    files = sorted(f for d in folders or [path] for f in d.glob("*.txt"))
    if not files:
        raise FileNotFoundError(
            f"No PhysioNet records (*.txt) in {path} or its set-a/set-b folders."
        )
    return files


def load_physionet(
    path: str | os.PathLike,
    *,
    quantization: float | None = 1.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_patients: int | None = None,
) -> dict:
    """Loads PhysioNet 2012 records as padded batches on one common time grid.

    Reads every record under `path` (see [`tadiffeq.data.physionet_files`][]),
    shuffles them with `seed` and keeps `test_fraction` for testing. The time grid is
    the union of all records' (rounded) observation times, in hours divided by 48
    (so in [0, 1]); a record is unobserved (mask 0) at the grid times it lacks. Each
    feature is min-max normalised with the minimum and maximum of its observed
    values in the training split (Rubanova et al. normalise the same way, over all
    data); unobserved entries are 0.

    **Arguments:**

    - `path`: a folder holding `set-a/` and/or `set-b/` of `RecordID.txt` files (or
      the files themselves).
    - `quantization`: hours to round the times to; default 1 h, which gives the 49
      grid times 0, 1, ..., 48 h; 0.1 h (Rubanova et al.) gives up to 481; `None`
      keeps the minutes (up to 2,881).
    - `test_fraction`: in (0, 1), default 0.2 (the 80/20 split of Pal et al.).
    - `seed`: of the shuffle.
    - `max_patients`: read only the first so many files (sorted by name).

    **Returns:** a dict with `times` float32 `(T,)` in [0, 1]; `train` and `test`,
    each a dict of `values` float32 `(N, T, 37)`, `mask` float32 `(N, T, 37)` and
    `record_ids` int64 `(N,)`; `feature_min`, `feature_max` float64 `(37,)` (the
    normalisation); `features` (the names).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
    if max_patients is not None and max_patients < 2:
        raise ValueError(f"`max_patients` must be at least 2, got {max_patients}.")
    files = physionet_files(path)[:max_patients]
    if len(files) < 2:
        raise ValueError(f"Need at least 2 records in {path}, found {len(files)}.")
    records = [read_physionet_record(f, quantization=quantization) for f in files]
    for f, (_, hours, _, _) in zip(files, records):
        if len(hours) and (hours[0] < 0 or hours[-1] > PHYSIONET_HOURS):
            raise ValueError(f"{f}: times must lie in [00:00, 48:00].")
    grid = np.unique(np.concatenate([r[1] for r in records] + [np.zeros(1)]))
    n, num_features = len(records), len(PHYSIONET_FEATURES)
    values = np.zeros((n, len(grid), num_features))
    mask = np.zeros((n, len(grid), num_features))
    for i, (_, hours, v, m) in enumerate(records):
        idx = np.searchsorted(grid, hours)
        values[i, idx], mask[i, idx] = v, m
    ids = np.array([r[0] for r in records], dtype=np.int64)
    order = np.random.default_rng(seed).permutation(n)
    num_test = min(n - 1, max(1, round(test_fraction * n)))
    train_idx, test_idx = np.sort(order[num_test:]), np.sort(order[:num_test])
    observed = mask[train_idx] > 0
    train_values = values[train_idx]
    lo = np.where(observed, train_values, np.inf).min(axis=(0, 1))
    hi = np.where(observed, train_values, -np.inf).max(axis=(0, 1))
    lo = np.where(np.isfinite(lo), lo, 0.0)
    hi = np.where(np.isfinite(hi), hi, 1.0)
    span = np.where(hi > lo, hi - lo, 1.0)
    normed = np.where(mask > 0, (values - lo) / span, 0.0)

    def split(idx):
        return dict(
            values=normed[idx].astype(np.float32),
            mask=mask[idx].astype(np.float32),
            record_ids=ids[idx],
        )

    return dict(
        times=(grid / PHYSIONET_HOURS).astype(np.float32),
        train=split(train_idx),
        test=split(test_idx),
        feature_min=lo,
        feature_max=hi,
        features=PHYSIONET_FEATURES,
    )


# A typical level and relative spread of each feature (roughly the adult ICU ranges),
# for the generated records: value = level * exp(spread * x).
_LEVELS = np.array([
    80, 3.0, 110, 60, 70, 1.5, 25, 160, 1.4, 60, 0.55, 11, 140, 24, 30, 87, 4.1, 2.5,
    2.0, 80, 0.7, 139, 58, 77, 118, 40, 140, 7.39, 200, 19, 96.5, 119, 37.0, 7.0, 0.8,
    120, 12,
], dtype=np.float64)  # fmt: skip
_SPREADS = np.array([
    0.15, 0.2, 0.4, 0.5, 0.5, 0.5, 0.5, 0.25, 0.5, 0.2, 0.25, 0.3, 0.25, 0.15, 0.15,
    0.15, 0.12, 0.5, 0.15, 0.15, 0.4, 0.03, 0.2, 0.18, 0.18, 0.2, 0.35, 0.01, 0.4,
    0.25, 0.03, 0.17, 0.02, 0.6, 0.6, 0.6, 0.4,
])  # fmt: skip
_GENERATOR_VERSION = 2


def _latent_rate(params, z):
    """dz/ds of the generator's latent ODE for a batch `z` `(n, d)`."""
    rot, damp, w, b = params
    x, y = z[:, 0::2], z[:, 1::2]
    lin = np.empty_like(z)
    lin[:, 0::2] = -damp * x - rot * y
    lin[:, 1::2] = rot * x - damp * y
    return lin + 0.5 * np.tanh(z @ w.T + b)


def _latent_paths(params, z0, minutes):
    """z at the observation `minutes` `(n, K)` (integers in [0, 2880]) of each
    patient, from `z0` `(n, d)`: classical RK4 in float64 with a one-minute step
    (h = 1/2880 in s), so every observation time is a grid point."""
    n, k = minutes.shape
    out = np.empty((n, k, z0.shape[1]))
    flat = minutes.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(2882))
    rows, cols = np.divmod(order, k)
    h = 1.0 / 2880.0
    z = z0.astype(np.float64)
    for minute in range(2881):
        lo, hi = bounds[minute], bounds[minute + 1]
        if hi > lo:
            out[rows[lo:hi], cols[lo:hi]] = z[rows[lo:hi]]
        if minute == 2880:
            break
        k1 = _latent_rate(params, z)
        k2 = _latent_rate(params, z + h / 2 * k1)
        k3 = _latent_rate(params, z + h / 2 * k2)
        k4 = _latent_rate(params, z + h * k3)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return out


def generate_physionet(
    directory: str | os.PathLike,
    num_patients: int = 1000,
    *,
    seed: int = 0,
    latent_dim: int = 6,
    mean_events: float = 24.0,
    noise: float = 0.05,
) -> pathlib.Path:
    """Writes a generated dataset in the PhysioNet 2012 file format, so that
    [`tadiffeq.data.load_physionet`][] reads it like the real one: `directory/set-a/`
    holds one `RecordID.txt` per patient (header `Time,Parameter,Value`, times
    `HH:MM` in [00:00, 48:00]; RecordID, Age, Gender, Height and ICUType lines at
    00:00, sometimes `Weight,-1` there too, which the loader reads as missing).

    **Model.** A latent state z of `latent_dim` (even) dimensions follows one smooth
    nonlinear ODE shared by all patients on s = hours / 48 in [0, 1]: damped
    rotations of `latent_dim / 2` pairs (frequencies 0.5--2 turns over the 48 h,
    damping 0.1--1) plus `0.5 tanh(W z + b)`; integrated by classical RK4 in
    float64 with a one-minute step, so the observation minutes are on its grid.
    Each patient starts from z0 ~ N(0, I). Feature f is
    `level_f * exp(spread_f * (C_f . tanh(z) + noise * eps))`, eps ~ N(0, 1), with
    a typical level and spread per feature (adult ICU ranges), so values stay
    positive. Observation events: 1 + Poisson(`mean_events`) distinct minutes drawn
    uniformly in [0, 2880]; at each event feature f is measured with its own
    probability (uniform in 0.05--0.8 per feature, at least one feature per event).
    Values are written with 6 significant digits.

    Deterministic given the arguments; if `directory` already holds a dataset made
    with the same arguments (its `generator.json`), nothing is written.

    **Returns:** `directory`, as a `pathlib.Path`.
    """
    for name, value in (("num_patients", num_patients), ("latent_dim", latent_dim)):
        check_positive_int(name, value)
    if latent_dim % 2:
        raise ValueError(f"`latent_dim` must be even (pairs), got {latent_dim}.")
    if not (mean_events > 0 and math.isfinite(mean_events)):
        raise ValueError(f"`mean_events` must be positive, got {mean_events}.")
    if not (noise >= 0 and math.isfinite(noise)):
        raise ValueError(f"`noise` must be >= 0, got {noise}.")
    directory = pathlib.Path(directory)
    spec = dict(
        num_patients=num_patients, seed=seed, latent_dim=latent_dim,
        mean_events=float(mean_events), noise=float(noise),
        version=_GENERATOR_VERSION,
    )  # fmt: skip
    marker = directory / "generator.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return directory
    rng = np.random.default_rng(seed)
    d, num_features = latent_dim, len(PHYSIONET_FEATURES)
    params = (
        rng.uniform(0.5, 2.0, d // 2) * 2 * np.pi,  # rotation rate, rad / unit s
        rng.uniform(0.1, 1.0, d // 2),  # damping
        rng.normal(0, 1 / np.sqrt(d), (d, d)),
        rng.normal(0, 0.3, d),
    )
    readout = rng.normal(0, 1 / np.sqrt(d), (num_features, d))
    probability = rng.uniform(0.05, 0.8, num_features)
    events = []
    for _ in range(num_patients):
        k = min(2881, 1 + rng.poisson(mean_events))
        events.append(np.sort(rng.choice(2881, size=k, replace=False)))
    width = max(len(e) for e in events)
    minutes = np.stack([np.pad(e, (0, width - len(e)), mode="edge") for e in events])
    z0 = rng.normal(0, 1, (num_patients, d))
    paths = _latent_paths(params, z0, minutes)  # (n, K, d)
    x = np.tanh(paths) @ readout.T  # (n, K, 37)
    x = x + noise * rng.normal(size=x.shape)
    values = _LEVELS * np.exp(_SPREADS * x)
    folder = directory / "set-a"
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for old in folder.glob("*.txt"):
        old.unlink()
    for i, times in enumerate(events):
        record_id = 100000 + i
        lines = [
            _HEADER,
            f"00:00,RecordID,{record_id}",
            f"00:00,Age,{int(rng.integers(18, 90))}",
            f"00:00,Gender,{int(rng.integers(0, 2))}",
            f"00:00,Height,{-1 if rng.random() < 0.4 else int(rng.integers(150, 195))}",
            f"00:00,ICUType,{int(rng.integers(1, 5))}",
        ]
        if rng.random() < 0.3:
            lines.append("00:00,Weight,-1")
        for j, minute in enumerate(times):
            seen = rng.random(num_features) < probability
            if not seen.any():
                seen[rng.integers(num_features)] = True
            stamp = f"{minute // 60:02d}:{minute % 60:02d}"
            for f in np.flatnonzero(seen):
                value = f"{values[i, j, f]:.6g}"
                lines.append(f"{stamp},{PHYSIONET_FEATURES[f]},{value}")
        (folder / f"{record_id}.txt").write_text("\n".join(lines) + "\n")
    marker.write_text(json.dumps(spec))
    return directory
