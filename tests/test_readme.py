"""The README's quick start, run.sh and .ci/run agree, and the flag tables of docs/flags.md match the config dataclasses.

Nothing here trains: these tests read files (and import the configs for the flag tables)."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FLAGS_DOC = (ROOT / "docs" / "flags.md").read_text()


def section(title: str) -> str:
    """The README text from the ``## <title>`` heading to the next ``## `` heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def commands(text: str) -> list:
    """Shell command lines (comments and blank lines dropped) of the fenced ``bash`` blocks in ``text``."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def script_commands(path: Path) -> list:
    """A shell script's command lines, comments and blank lines dropped."""
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_readme_opens_with_the_quick_start():
    assert re.findall(r"^## (.*)$", README, re.M)[0] == "Quick start"


def test_quick_start_has_the_two_commands_and_the_venv():
    quick = section("Quick start")
    cmds = commands(quick)
    assert "./run.sh" in cmds and "./run.sh test" in cmds, cmds
    assert "source .venv/bin/activate" in cmds
    for fact in ("libusb-1.0", "Python 3.10", "outputs/argp-demo/"):
        assert fact in quick, fact


def test_ci_runs_the_readme_test_command():
    """.ci/run must run the quick start's test command, and the quick start must show what CI runs."""
    ci = [c for c in script_commands(ROOT / ".ci" / "run") if not c.startswith(("set ", "cd "))]
    assert ci == ["./run.sh test --all"], f".ci/run runs {ci}; the README's quick start says ./run.sh test --all"
    assert set(ci) <= set(commands(section("Quick start")))


def test_run_sh_accepts_the_readme_commands():
    """run.sh defaults to the demo and has a ``test`` branch; .venv is where the README says it is."""
    text = (ROOT / "run.sh").read_text()
    assert '"${1:-demo}"' in text
    branches = set(re.findall(r"^\s*([a-z|]+)\)", text, re.M))
    assert {"demo", "test"} <= branches, branches
    assert "source .venv/bin/activate" in text
    assert "libusb-1.0" in text


def load_flags_module():
    """docs/flags.py, imported from its path (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("argp_docs_flags", ROOT / "docs" / "flags.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def flags():
    return load_flags_module()


def test_every_plugin_flag_is_in_the_readme(flags):
    in_readme = flags.readme_tables(FLAGS_DOC)
    for name, rows in flags.tables().items():
        assert name in in_readme, f"docs/flags.md has no <!-- flags:{name} --> table"
        listed = set(re.findall(r"^\| `(--[\w.-]+)` \|", in_readme[name], re.M))
        wanted = {flag for flag, _, _ in rows}
        assert listed == wanted, (f"{name}: missing {sorted(wanted - listed)}, stale {sorted(listed - wanted)}; "
                                  f"run: .venv/bin/python docs/flags.py --write")


def test_flag_tables_match_the_dataclasses(flags):
    """Defaults and help texts too: regenerate with ``.venv/bin/python docs/flags.py --write``."""
    in_readme = flags.readme_tables(FLAGS_DOC)
    for name, table in flags.generated().items():
        assert in_readme.get(name) == table, (
            f"docs/flags.md's {name} flag table is out of date: run .venv/bin/python docs/flags.py --write")


def test_flag_generator_finds_docstrings_and_choices(flags):
    from argp_ns.model import SplatfactoArgpModelConfig

    docs = flags.field_docs(SplatfactoArgpModelConfig)
    assert docs["irp_start"].startswith("First IRP round")
    assert "score_backend" in docs  # inherited from the shared base
    rows = {flag: (default, meaning) for flag, default, meaning in flags.tables()["splatfacto-argp"]}
    assert rows["--pipeline.model.irp-mode"][0] == "moments" and "One of: moments, frozen, hidden." in rows["--pipeline.model.irp-mode"][1]
    assert "--pipeline.model.warmup-length" not in rows  # splatfacto's own, unchanged default
    assert "splatfacto's default: 15000" in rows["--pipeline.model.stop-split-at"][1]


def test_rewrite_replaces_only_the_marked_tables(flags):
    text = "a\n<!-- flags:x -->\nold\n<!-- /flags -->\nb\n<!-- flags:y -->\nkeep\n<!-- /flags -->\n"
    out = flags.rewrite(text, {"x": "new\n"})
    assert out == "a\n<!-- flags:x -->\nnew\n<!-- /flags -->\nb\n<!-- flags:y -->\nkeep\n<!-- /flags -->\n"


def run_install_torch(tmp_path: Path, gpu: bool, cpu_index: str) -> tuple:
    """run.sh's install_torch with python stubbed (the index probe of a URL naming 'unreachable' fails): (pip calls,
    stderr)."""
    import subprocess

    log = tmp_path / "calls"
    script = f"""
source {ROOT / 'run.sh'}
has_nvidia_gpu() {{ return {0 if gpu else 1}; }}
python() {{
  if [ "$1" = -c ]; then case "$*" in *unreachable*) return 1 ;; esac; echo "argp_ns: torch 2.x (stub)"; return 0; fi
  echo "$*" >> {log}
  case "$*" in *unreachable*) return 1 ;; esac
}}
TORCH_CPU_INDEX={cpu_index} install_torch
"""
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return log.read_text().splitlines(), proc.stderr


def test_run_sh_takes_torchs_cpu_build_without_a_gpu_and_falls_back_when_it_cannot(tmp_path):
    calls, err = run_install_torch(tmp_path, gpu=False, cpu_index="https://cpu.example/whl")
    assert calls == ["-m pip install -q torch torchvision --index-url https://cpu.example/whl"]
    assert err == ""
    (tmp_path / "calls").unlink()
    calls, err = run_install_torch(tmp_path, gpu=False, cpu_index="https://unreachable.example/whl")
    assert calls == ["-m pip install -q torch torchvision"]
    assert "argp_ns: torch's CPU index (https://unreachable.example/whl) cannot be reached" in err
    (tmp_path / "calls").unlink()
    calls, err = run_install_torch(tmp_path, gpu=True, cpu_index="https://cpu.example/whl")
    assert calls == ["-m pip install -q torch torchvision"] and err == ""  # a GPU machine: the default index's build
