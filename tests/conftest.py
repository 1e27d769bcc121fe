"Shared fixtures: small real and synthetic datasets written to a temporary folder."
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def synthetic_csv(tmp_path):
    "A 3,000-row synthetic CSV with a timestamp, numerics, categoricals and a binary target `y`."
    from mllifecycle.data import make_synthetic

    df = make_synthetic(3000, n_numeric=5, n_categorical=3, seed=3).rename(columns={"target": "y"})
    path = tmp_path / "synthetic.csv"
    df.to_csv(path, index=False)
    return path


def artifact_files(run_dir):
    "Every file under a run directory except the executed notebooks of the report and the writers' lock files."
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.is_file() and "report" not in p.relative_to(run_dir).parts and not p.name.endswith(".lock"))
