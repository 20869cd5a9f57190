"""Third-party domains through a real `suite.domains` entry point (a dist-info folder on PYTHONPATH), the
allow/deny lists, and broken plugins: one warning, and the CLI keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from suite.core.plugins import DomainSpec

LIST_SPECS = (
    "import json; from suite.core.plugins import load_domain_specs; "
    "print(json.dumps([s.name for s in load_domain_specs()]))"
)


def write_dist(site: Path, dist: str, entry_points: dict[str, str], files: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata sees it: <dist>.dist-info with METADATA and
    entry_points.txt, plus its modules."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = ["[suite.domains]", *(f"{name} = {target}" for name, target in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for rel, source in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


DEMO_FILES = {
    "demo_domain/__init__.py": """
        from suite.core.plugins import DomainSpec

        DOMAIN = DomainSpec(name="demo", help="A third-party demo domain.", cli="demo_domain.cli:app")
    """,
    "demo_domain/cli.py": """
        import typer

        app = typer.Typer(help="A third-party demo domain.", no_args_is_help=True)


        @app.command()
        def hello(name: str = "world") -> None:
            \"\"\"Say hello.\"\"\"
            typer.echo(f"hello {name} from demo")


        @app.command()
        def other() -> None:
            \"\"\"A second command, so `hello` stays a sub-command.\"\"\"
    """,
}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    write_dist(site, "suite_demo_domain", {"demo": "demo_domain:DOMAIN"}, DEMO_FILES)
    return site


def run(site: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path, **(env or {})},
    )


def spec_names(site: Path, env: dict[str, str] | None = None) -> list[str]:
    proc = run(site, "-c", LIST_SPECS, env=env)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_third_party_domain_from_an_entry_point(site: Path) -> None:
    assert "demo" in spec_names(site)
    help_ = run(site, "-m", "suite", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "demo" in help_.stdout and "third-party demo domain" in help_.stdout
    hello = run(site, "-m", "suite", "demo", "hello", "--name", "you")
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout.strip() == "hello you from demo"


@pytest.mark.parametrize(
    ("env", "loaded"),
    [
        ({"SUITE_PLUGINS__DENY": "demo"}, False),
        ({"SUITE_PLUGINS__DENY": '["other", "demo"]'}, False),
        ({"SUITE_PLUGINS__ALLOW": "other"}, False),
        ({"SUITE_PLUGINS__ALLOW": "[]"}, False),
        ({"SUITE_PLUGINS__ALLOW": "demo"}, True),
        ({"SUITE_PLUGINS__ALLOW": "demo", "SUITE_PLUGINS__DENY": "demo"}, False),  # deny wins
    ],
)
def test_allow_and_deny_from_the_environment(site: Path, env: dict[str, str], loaded: bool) -> None:
    assert ("demo" in spec_names(site, env)) is loaded


def test_deny_from_suite_toml(site: Path, tmp_path: Path) -> None:
    (tmp_path / "suite.toml").write_text('[plugins]\ndeny = ["demo"]\n')  # the test's working directory
    assert "demo" not in spec_names(site)
    (tmp_path / "suite.toml").write_text('[plugins]\nallow = ["demo"]\n')
    assert "demo" in spec_names(site)


def test_allow_list_never_hides_in_tree_domains(site: Path) -> None:
    in_tree = [n for n in spec_names(site) if n != "demo"]
    assert [n for n in spec_names(site, {"SUITE_PLUGINS__ALLOW": "[]"})] == in_tree


BROKEN = {
    "raises": ("broken_raises:DOMAIN", {"broken_raises/__init__.py": "raise RuntimeError('plugin bug')\n"}),
    "missing": ("no_such_module_here:DOMAIN", {}),
    "not-a-spec": ("broken_type:DOMAIN", {"broken_type/__init__.py": "DOMAIN = {'name': 'x'}\n"}),
    "bad-settings": (
        "broken_settings:DOMAIN",
        {
            "broken_settings/__init__.py": (
                "from suite.core.plugins import DomainSpec\n"
                "DOMAIN = DomainSpec(\n"
                "    name='bad-settings', help='x', settings='broken_settings.nope:Settings'\n"
                ")\n"
            )
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_plugin_warns_once_and_the_cli_works(tmp_path: Path, kind: str) -> None:
    target, files = BROKEN[kind]
    site = tmp_path / "site"
    write_dist(site, "suite_broken", {kind: target}, files)
    for args in (("--help",), ("config", "show", "--json")):  # the second also builds the settings model
        proc = run(site, "-m", "suite", *args)
        assert proc.returncode == 0, proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(warnings) == 1, proc.stderr
        assert warnings[0].startswith(f"warning: plugin {kind!r} ({target}) skipped: ")
    assert kind not in spec_names(site)


def test_plugin_whose_cli_fails_to_import(tmp_path: Path) -> None:
    site = tmp_path / "site"
    files = {
        "half_domain/__init__.py": (
            "from suite.core.plugins import DomainSpec\n"
            "DOMAIN = DomainSpec(name='half', help='Half a domain.', cli='half_domain.cli:app')\n"
        ),
        "half_domain/cli.py": "import no_such_dependency_xyz\n",
    }
    write_dist(site, "suite_half", {"half": "half_domain:DOMAIN"}, files)
    proc = run(site, "-m", "suite", "--help")
    assert proc.returncode == 0
    assert proc.stderr.strip().splitlines() == [
        "warning: domain 'half' CLI skipped: ModuleNotFoundError: No module named 'no_such_dependency_xyz'"
    ]


def test_spec_loading_imports_nothing_heavy(site: Path) -> None:
    code = (
        "import sys; from suite.core.plugins import load_domain_specs; load_domain_specs(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'diffusers', 'transformers', 'sqlalchemy', 'fastapi'}))"
    )
    proc = run(site, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_load_attr_resolves_dotted_attributes() -> None:
    assert DomainSpec.load_attr("os.path:join") is os.path.join
    assert DomainSpec.load_attr("suite.core.plugins:DomainSpec.load_attr") == DomainSpec.load_attr
    assert DomainSpec.load_attr("json") is json
