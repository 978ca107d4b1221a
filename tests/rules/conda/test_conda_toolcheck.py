"""conda_channel says in one line which host tool its recipes need and how to install it."""

import shutil
import subprocess
import sys

from support import REPO, Workspace

from rules.conda.toolcheck import C_COMPILER, build_scripts

RECIPES = REPO / "examples" / "channel" / "recipes"


def test_the_example_recipes_that_call_the_c_compiler_are_found():
    calling = sorted(r.parent.name for r in RECIPES.glob("*/recipe.yaml")
                     if C_COMPILER.calls.search(build_scripts(r)))
    assert calling == ["hb-hello", "libhb"]


def test_missing_c_compiler_is_one_line_with_the_install_command(tmp_path):
    root = tmp_path / "ws"
    (root / "channel" / "recipes").mkdir(parents=True)
    (root / "hermetic.toml").write_text("")
    for name in ("hb-vocab-1", "libhb"):
        shutil.copytree(RECIPES / name, root / "channel" / "recipes" / name)
    (root / "channel" / "BUILD.hermetic").write_text(
        'conda_channel(name = "ch", recipes = ["recipes/hb-vocab-1/recipe.yaml", "recipes/libhb/recipe.yaml"],\n'
        '              srcs = glob(["recipes/libhb/src/**"]))\n')
    ws = Workspace(root, tmp_path / "cache")
    env = ws.env()
    env["PATH"] = str(tmp_path / "empty-bin")  # no cc (hb itself runs from sys.executable)
    proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", "//channel:ch"], check=False,
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 5, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("action failed:")]
    assert errors == [("action failed: conda_channel //channel:ch needs a C compiler: channel/recipes/libhb/recipe.yaml "
                       "runs `cc`, which was not found on PATH (Debian: apt-get install gcc libc6-dev)")], proc.stderr
    after = proc.stderr.split(errors[0], 1)[1]
    assert after.strip() == "" and "Traceback" not in proc.stderr, proc.stderr
