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
