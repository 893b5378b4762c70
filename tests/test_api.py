"""The Python API (`import search`): the README's example runs as written, importing the
package stays light, every public function is documented, and a space may be a dict."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, cli_env

HEAVY = ("keras", "tensorflow", "jax", "torch", "mlflow", "optuna", "keras_tuner", "pandas", "sklearn", "plotly")


def readme_example() -> str:
    """The Python block of README.md's "From Python" section, exactly as written there."""
    section = (REPO / "README.md").read_text().split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_python_example_runs_as_written(workdir, tiny_cifar, capsys):
    (workdir / "data").symlink_to(tiny_cifar)  # the README's `data/`, here 1,000 synthetic images
    exec(compile(readme_example(), "README.md (From Python)", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out
    assert re.search(r"^study notebook \[optuna\]: ran 2 completed", printed, re.M)
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("notebook")
    roles = sorted(r.data.tags["blocksweep.role"] for r in client.search_runs([exp.experiment_id]))
    assert roles == ["parent", "trial", "trial"]
    assert (workdir / "compare" / "notebook" / "figures_notebook.html").exists()
    assert (workdir / "export" / "notebook" / "model.keras").stat().st_size > 0
    assert "'model.keras'" in printed


def test_importing_search_is_light_and_its_api_is_documented():
    probe = ("import json, sys, search; "
             "print(json.dumps([sorted(sys.modules), search.__all__, dir(search)]))")
    done = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True, text=True,
                          timeout=60, check=True)
    modules, public, listed = json.loads(done.stdout)
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    assert set(public) <= set(listed)

    import search

    functions = [name for name in public if callable(getattr(search, name)) and not isinstance(
        getattr(search, name), type)]
    assert set(functions) == {"load_space", "train", "sweep", "compare", "export", "predict", "evaluate",
                              "space_schema"}
    for name in functions:
        doc = getattr(search, name).__doc__ or ""
        assert "Returns:" in doc and ("Args:" in doc or name == "space_schema"), name
    with pytest.raises(AttributeError):
        search.no_such_function  # noqa: B018


def test_load_space_takes_a_dict_with_overrides_and_refuses_bad_input_in_one_line():
    import search

    space = {"name": "nb", "model": {"family": "vgg", "blocks": 1, "filters": 8},
             "params": {"train.learning_rate": {"type": "float", "low": 0.01, "high": 0.1, "log": True}}}
    spec = search.load_space(space, {"train.epochs": 2})
    assert (spec.name, spec.file.model.filters, spec.file.train.epochs) == ("nb", 8, 2)
    assert "train.learning_rate" in spec.space.params and space["model"] == {"family": "vgg", "blocks": 1,
                                                                              "filters": 8}  # not mutated
    again = search.load_space(spec, {"train.learning_rate": 0.05})  # a Spec, with more overrides
    assert not again.space.params and again.base_config().train.learning_rate == 0.05
    with pytest.raises(search.UsageError, match=r"^<space>: model\.blocks: .*greater than or equal to 1 \(got 0\)$"):
        search.load_space({**space, "model": {"family": "vgg", "blocks": 0}})
    with pytest.raises(search.UsageError, match=r"^<space>: train\.epoch: unknown key"):
        search.load_space({**space, "train": {"epoch": 3}})
