"""The README opens with the two set-up commands, and .ci/run runs exactly the test one."""

from conftest import ROOT


def first_block_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = first_block_commands()
    assert demo.endswith("python launch.py") and "torch==2.13.0" in demo
    assert "pytest" in tests and '".[test]"' in tests and "torch==2.13.0" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = first_block_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    assert ci[-1] == tests


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_the_console_sample_is_the_real_line_with_its_prefix():
    import re

    from minimind.tracking import console_line

    block = readme().split("The console (on a terminal", 1)[1].split("```", 2)[1]
    lines = [line for line in block.splitlines() if line.startswith("[")]
    assert lines and all(len(line) <= 120 for line in lines)
    line = next(line for line in lines if "Epoch:[" in line)
    m = re.fullmatch(r"\[\d\d:\d\d:\d\d\] Epoch:\[(\d+)/(\d+)\]\((\d+)/(\d+)\) loss:(\S+) lr:(\S+) "
                     r"grad_norm:(\S+) tok/s:(\d+)/(\d+) ETA:(\d+)m(\d+)s", line)
    assert m, line
    e, es, step, total, loss, lr, gn, tps, ltps, mins, secs = m.groups()
    values = {"epoch": int(e), "epochs": int(es), "step": int(step), "total_steps": int(total),
              "loss": float(loss), "lr": float(lr), "grad_norm": float(gn), "scale": None, "skipped": 0,
              "tokens_per_s": float(tps), "loss_tokens_per_s": float(ltps), "eta_s": int(mins) * 60 + int(secs)}
    assert line[11:] == console_line(values)  # what the code prints, not a hand-written copy
    assert any("if it stops, continue it with: python launch.py hydra.run.dir=outputs/" in x for x in lines)


def test_the_readme_says_how_long_the_tests_take_and_how_slurm_tests_skip():
    tests = readme().split("## Tests", 1)[1].split("##", 1)[0]
    assert 'python -m pytest -m "not slow"' in tests and "minutes" in tests and "@@" not in readme()
    assert "MINIMIND_REQUIRE_SLURM=1" in tests and ".ci/run" in tests


def test_the_fault_table_says_how_to_continue():
    table = readme().split("## When things go wrong", 1)[1].split("##", 1)[0]
    rows = {row.split("|")[1].strip(): row for row in table.splitlines() if row.startswith("| ")}
    assert "hydra.run.dir=<run dir>" in rows["SIGTERM / SIGUSR2 / Ctrl-C"]
    assert "hydra.run.dir=<run dir>" in rows["SIGKILL, OOM kill, node reboot"]
    assert "e.g. data.path=" in next(r for k, r in rows.items() if "data=pretrain" in k)


def test_the_slurm_skip_reason_says_how_to_run_them(tmp_path):
    import os
    import subprocess
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_slurm import cluster_answers

    if cluster_answers():
        return  # a cluster answers: nothing skips
    env = {k: v for k, v in os.environ.items() if k != "MINIMIND_REQUIRE_SLURM"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                        str(ROOT / "tests" / "test_slurm.py")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    skipped = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all("MINIMIND_REQUIRE_SLURM=1" in line and ".ci/run" in line for line in skipped), r.stdout
