"""reports/tuned.yaml is a params file of the select stage: DVC reads it, records its values in dvc.lock, and reruns
select when they differ. dvc.lock is rewritten with ruamel's round-trip dumper on every `dvc repro`, and that dumper
truncated a float written in exponent form (5.896835909914791e-05 became ...790e-05): select reran every other
time. Every value written must survive DVC's own load and dump unchanged: floats are written rounded to 12
significant digits (dlpipe.io.PARAMS_DIGITS), far below any difference a tuned value makes."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
from dvc.utils.serialize import dumps_yaml, parse_yaml, parse_yaml_for_update

from dlpipe.io import write_json
from dlpipe.paths import ProjectPaths
from dlpipe.stages.study import write_tuned_params

PROBLEM = 5.896835909914791e-05  # a tuned train.l2 that DVC's lock file changed


def write_tuned(root: Path, tuned: dict[str, dict]) -> str:
    """reports/tuned.yaml as the study stage writes it from the tuning reports' best_params; its text."""
    paths = ProjectPaths(root)
    for arch, best in tuned.items():
        paths.tuning_report(arch).parent.mkdir(parents=True, exist_ok=True)
        write_json(paths.tuning_report(arch), {"best_params": best})
    write_tuned_params(SimpleNamespace(architectures=list(tuned)), paths)
    return paths.tuned_params.read_text()


def through_dvc_lock(values: dict) -> tuple[dict, str, str]:
    """What DVC does with a params file's values: record them in dvc.lock (its dumper), rewrite the lock on a later
    repro (round-trip load and dump), then compare the lock's values with the file's. Returns (the values the lock
    holds after the rewrite, the lock text first written, the lock text rewritten)."""
    lock = dumps_yaml({"stages": {"select": {"params": {"reports/tuned.yaml": values}}}})
    rewritten = dumps_yaml(parse_yaml_for_update(lock, "dvc.lock"))
    again = parse_yaml(rewritten, "dvc.lock")["stages"]["select"]["params"]["reports/tuned.yaml"]
    return again, lock, rewritten


def rounded(value):
    return float(f"{value:.12g}") if isinstance(value, float) else value


def assert_survives_dvc(text: str, tuned: dict) -> None:
    read = parse_yaml(text, "reports/tuned.yaml")  # DVC's params loader
    assert set(read) == set(tuned)
    for arch, best in tuned.items():
        assert read[arch] == {k: rounded(v) for k, v in best.items()}  # ints, lists and strings unchanged
        for key, value in best.items():
            if isinstance(value, float):
                assert read[arch][key] == pytest.approx(value, rel=1e-11, abs=0)
    for arch, best in read.items():
        for key, value in best.items():
            assert type(value) is type(tuned[arch][key]), (arch, key, value)
    held, lock, rewritten = through_dvc_lock(read)
    assert held == read, [(k, read[a][k], held[a][k]) for a in read for k in read[a] if read[a][k] != held[a][k]]
    assert rewritten == lock  # byte for byte: a rewrite of dvc.lock changes nothing
    # and DVC's round-trip loader reads the params file itself as the same numbers
    assert parse_yaml_for_update(text, "reports/tuned.yaml") == read


def test_the_problem_value_survives_dvc_lock(tmp_path: Path) -> None:
    tuned = {"perceptron": {"train.batch_size": 32, "train.l2": PROBLEM, "train.lr": 0.008548558997574835}}
    text = write_tuned(tmp_path, tuned)
    assert_survives_dvc(text, tuned)
    assert parse_yaml(text, "t")["perceptron"]["train.l2"] == 5.89683590991e-05


def random_floats(rng: random.Random, n: int) -> list[float]:
    """Log-uniform magnitudes from 1e-12 to 1e12 of either sign, the shortest reprs of random doubles, edge cases."""
    values = [rng.choice((1, -1)) * 10 ** rng.uniform(-12, 12) for _ in range(n)]
    values += [float(f"{rng.random():.{rng.randint(1, 17)}g}") for _ in range(n // 4)]
    values += [0.0, -0.0, 1.0, 1e-4, 1e-5, 9.999999999999999e-05, 1e16, 1.5e-7, 2.220446049250313e-16, PROBLEM]
    return values


@pytest.mark.parametrize("seed", range(5))
def test_random_floats_survive_dvc_lock(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    floats = random_floats(rng, 200)
    tuned = {
        "mlp": {f"train.f{i:03d}": v for i, v in enumerate(floats)},
        "cnn": {"model.channels": [32, 64], "model.activation": "relu", "train.batch_size": 64, "model.bias": True},
    }
    text = write_tuned(tmp_path, tuned)
    assert_survives_dvc(text, tuned)
    signs = {k: math.copysign(1, v) for k, v in parse_yaml(text, "t")["mlp"].items()}
    assert signs == {k: math.copysign(1, v) for k, v in tuned["mlp"].items()}  # -0.0 stays -0.0
