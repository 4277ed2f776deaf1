from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tuneloop.config import load_params
from tuneloop.errors import ConfigError


def _params_with(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repository_params_load_into_typed_config():
    params = load_params(REPO / "params.yaml")
    assert params.base.seed == 42
    assert 0 < params.prepare.val_fraction < 1
    assert params.validate_.policy.duplicates in ("fail", "quarantine")


def test_typo_key_is_named_with_a_suggestion(tmp_path):
    path = _params_with(tmp_path, lambda r: r["prepare"].update(val_fracton=r["prepare"].pop("val_fraction")))
    with pytest.raises(ConfigError) as exc:
        load_params(path)
    message = str(exc.value)
    assert "unknown key 'prepare.val_fracton'" in message
    assert "Did you mean 'val_fraction'" in message
    assert "missing key 'prepare.val_fraction'" in message


def test_negative_split_fraction_names_key_and_range(tmp_path):
    path = _params_with(tmp_path, lambda r: r["prepare"].update(val_fraction=-0.1))
    with pytest.raises(ConfigError, match=r"prepare\.val_fraction = -0\.1: Input should be greater than 0"):
        load_params(path)


def test_fractions_must_leave_training_rows(tmp_path):
    path = _params_with(tmp_path, lambda r: r["prepare"].update(val_fraction=0.5, test_fraction=0.5))
    with pytest.raises(ConfigError, match="val_fraction \\+ test_fraction must be < 1"):
        load_params(path)


def test_wrong_type_and_bad_policy_name_allowed_values(tmp_path):
    def edit(raw):
        raw["base"]["seed"] = "abc"
        raw["validate"]["policy"]["duplicates"] = "drop"

    with pytest.raises(ConfigError) as exc:
        load_params(_params_with(tmp_path, edit))
    assert "base.seed = 'abc'" in str(exc.value)
    assert "validate.policy.duplicates = 'drop': Input should be 'fail' or 'quarantine'" in str(exc.value)


def test_unknown_section_is_rejected(tmp_path):
    path = _params_with(tmp_path, lambda r: r.update(trian={"lr": 1}))
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_params(path)


def test_overrides_apply_and_are_validated():
    params = load_params(REPO / "params.yaml", ["prepare.val_fraction=0.25", "data.labels=[x, y]"])
    assert params.prepare.val_fraction == 0.25
    assert params.data.labels == ["x", "y"]
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_params(REPO / "params.yaml", ["val_fraction"])
    with pytest.raises(ConfigError, match="unknown key 'prepare.nope'"):
        load_params(REPO / "params.yaml", ["prepare.nope=1"])


def test_missing_params_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="params file not found.*--params"):
        load_params(tmp_path / "nope.yaml")


def test_cli_reports_bad_params_without_traceback(project, cli):
    text = (project / "params.yaml").read_text().replace("val_fraction:", "val_fracton:")
    (project / "params.yaml").write_text(text)
    (project / "in.csv").write_text("text,label\nhi,a\n")
    result = cli("data", "import", "in.csv", "--no-dvc")
    assert result.exit_code == 1
    assert "unknown key 'prepare.val_fracton'" in result.stderr
    assert "Traceback" not in result.output
    assert not (project / "data" / "raw" / "corpus.csv").exists()


def test_cli_set_override_with_negative_fraction(project, cli):
    (project / "in.csv").write_text("text,label\nhi,a\n")
    result = cli("data", "import", "in.csv", "--no-dvc", "--set", "prepare.test_fraction=-1")
    assert result.exit_code == 1
    assert "prepare.test_fraction = -1" in result.stderr


def test_the_old_single_work_pool_names_the_two_keys_replacing_it(tmp_path):
    def old_deploy(raw):
        raw["deploy"] = {"work_pool": "tuneloop-local", "training_cron": "0 3 * * 1", "timezone": "UTC"}

    with pytest.raises(ConfigError) as exc:
        load_params(_params_with(tmp_path, old_deploy))
    message = str(exc.value)
    assert "deploy.work_pool ('tuneloop-local') was replaced" in message
    assert "deploy.cpu_pool" in message and "deploy.gpu_pool" in message and "unknown key" not in message


def test_train_pool_takes_gpu_cpu_or_inline_and_defaults_to_gpu(tmp_path):
    assert load_params(REPO / "params.yaml").deploy.train_pool == "gpu"
    assert load_params(REPO / "params.yaml", ["deploy.train_pool=inline"]).deploy.train_pool == "inline"
    with pytest.raises(ConfigError, match=r"deploy\.train_pool = 'tpu'.*'gpu', 'cpu' or 'inline'"):
        load_params(REPO / "params.yaml", ["deploy.train_pool=tpu"])


def test_libyaml_and_the_python_parser_read_params_alike(tmp_path):
    """params.yaml is parsed with libyaml for speed; its values must be the pure-Python parser's, `1e-4` included,
    and a syntax error still shows the offending line with a caret (the Python parser's message)."""
    from tuneloop.config import _CLoader, _PyLoader

    text = (REPO / "params.yaml").read_text(encoding="utf-8") + "extra:\n  lr: 1e-4\n  big: 2.5E+3\n  word: é中\n"
    assert not yaml.__with_libyaml__ or issubclass(_CLoader, yaml.CSafeLoader)  # libyaml where PyYAML has it
    fast, slow = yaml.load(text, Loader=_CLoader), yaml.load(text, Loader=_PyLoader)
    assert fast == slow and fast["extra"]["lr"] == 1e-4 and fast["extra"]["big"] == 2500.0
    bad = tmp_path / "params.yaml"
    bad.write_text("base:\n  model: [a\ntrain: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    assert "model: [a" in str(err.value) and "^" in str(err.value) and "Fix the syntax" in str(err.value)
