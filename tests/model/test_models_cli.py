"""`tuneloop models` and `tuneloop package` through the CLI."""

import json
import shutil

from tuneloop import registry


def test_models_cli_register_list_show_force_promote_package(project, cli, tiny_model, tiny_trained, store):
    shutil.copytree(tiny_trained, project / "m")
    assert cli("package").exit_code == 1  # nothing to package yet: a clear message
    registered = cli("models", "register", "m")
    assert registered.exit_code == 0, registered.output
    tag = registered.stdout.split()[-1]
    listed = cli("models", "list")
    assert tag in listed.stdout and "challenger" in listed.stdout
    shown = json.loads(cli("models", "show", tag).stdout)
    assert shown["stage"] == "challenger" and shown["metadata"]["base_model"] == str(tiny_model)

    refused = cli("models", "promote", tag, "--force")
    assert refused.exit_code == 1 and "needs --reason" in refused.stderr
    forced = cli("models", "promote", tag, "--force", "--reason", "hotfix approved by on-call")
    assert forced.exit_code == 0
    assert registry.champion().tag == tag
    assert registry.history()[-1] == {**registry.history()[-1], "forced": True, "reason": "hotfix approved by on-call"}
    packaged = cli("package")
    assert packaged.exit_code == 0 and packaged.stdout.strip().startswith("tuneloop_classifier:")
    unknown = cli("models", "show", "nope")
    assert unknown.exit_code == 1 and "not in the store" in unknown.stderr
    nothing = cli("models", "rollback")
    assert nothing.exit_code == 1 and "nothing to roll back to" in nothing.stderr
