"""``minimind-train`` and ``python -m minimind`` work from any folder with the shipped conf/, from
the editable install and from a regular one (a wheel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import FAST, ROOT, run_launch


def test_python_m_minimind_help_from_another_folder(tmp_path):
    r = run_launch(["--help"], cwd=tmp_path, module=["-m", "minimind"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("python -m minimind: train MiniMind")
    assert "  python -m minimind [key=value ...]" in r.stdout and "model.from_weight=null" in r.stdout
    assert not (tmp_path / "outputs").exists()


def test_the_package_finds_the_shipped_conf():
    from minimind.cli import locate_conf

    conf = locate_conf()
    assert (conf / "config.yaml").read_text() == (ROOT / "conf" / "config.yaml").read_text()
    assert (conf / "model" / "tiny.yaml").is_file()


@pytest.mark.slow
def test_python_m_minimind_trains_in_the_current_folder(tmp_path):
    r = run_launch(FAST + ["loop.max_steps=2"], cwd=tmp_path, module=["-m", "minimind"])
    assert r.returncode == 0, r.stdout + r.stderr
    run = next(tmp_path.glob("outputs/*/*"))
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    r = run_launch(["data=pretrain"], cwd=tmp_path / "outputs", module=["-m", "minimind"])
    assert r.returncode == 2 and r.stderr.startswith("Error: data.path is not set")


def test_minimind_train_console_script(tmp_path):
    script = Path(sys.executable).parent / "minimind-train"
    if not script.exists():
        pytest.skip("minimind-train is not installed in this environment: run pip install -e . again")
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    r = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.startswith("minimind-train: train MiniMind"), r.stderr
    r = subprocess.run([str(script), "optim.gradclip=1"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2 and "unknown config key 'optim.gradclip'" in r.stderr


@pytest.mark.slow
def test_a_regular_install_ships_conf_and_trains(tmp_path):
    """Build the wheel (as pip install . does), install it into a folder of its own, and train from
    an unrelated folder with that copy (not the checkout)."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("minimind_hydra-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.split("minimind/conf/", 1)[1] for n in names if n.startswith("minimind/conf/")}
    expected = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped == expected
    assert "minimind-train = minimind.cli:main" in zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                              str(site), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    assert not (site / "minimind" / "conf").is_symlink()

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PYTHONPATH": str(site)}
    probe = subprocess.run([sys.executable, "-c", "import minimind.cli as c; print(c.__file__, c.locate_conf())"],
                           cwd=work, env=dict(os.environ, **env), capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and str(site) in probe.stdout and str(ROOT) not in probe.stdout, probe.stdout
    r = run_launch(FAST + ["loop.max_steps=2"], cwd=work, env=env, module=["-m", "minimind"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(next(work.glob("outputs/*/*/summary.json")).read_text())["status"] == "completed"
    shutil.rmtree(site)
