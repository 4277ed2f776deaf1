import subprocess
import sys


def test_help_path_imports_no_heavy_library():
    code = (
        "import sys, tuneloop.cli; heavy = {'torch', 'pandas', 'great_expectations', 'dvc', 'transformers'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_help_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "tuneloop", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("data", "prepare"):
        assert command in done.stdout
