"""`perdure list`, `show`, `steps`, `output` on executions real agent runs wrote (`support.inspect_app`).

In-process (`CliRunner`) on SQLite for what each command prints; real `python -m perdure.cli`
processes on SQLite, PostgreSQL and Redis for exit codes, 80-column output and pipes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perdure.cli import app
from perdure.storage import storage_from_url
from support import inspect_app
from support.paths import SRC, TESTS
from support.storages import backend_url

runner = CliRunner()


def _fill(url: str) -> dict[str, str]:
    async def run() -> dict[str, str]:
        store = storage_from_url(url)
        try:
            return await inspect_app.populate(store)
        finally:
            await store.close_async()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('inspect') / 'runs.db'}"
    return url, _fill(url)


def cli(url: str, *args: str, columns: int = 80) -> tuple[int, str, str]:
    result = runner.invoke(app, [args[0], "-s", url, *args[1:]], env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


def test_show_a_failed_run_with_retries(filled: tuple[str, dict[str, str]]) -> None:
    url, ids = filled
    code, out, _ = cli(url, "show", ids["failed"])
    assert code == 0, out
    assert ids["failed"] in out and "status     failed" in out and "agent      clerk" in out
    assert "error      ConnectionError: cannot store orders: connection reset by peer" in out
    assert "2 requests" in out and "1 tool call" in out
    attempts = [line for line in out.splitlines() if " attempt " in line]
    assert [line.split()[4] for line in attempts] == ["1", "2"]  # the try column of each failed try
    assert all("ConnectionError" in line for line in attempts)
    assert "Traceback" not in out
    code, out, _ = cli(url, "show", ids["failed"], "--traceback")
    assert code == 0 and "Traceback (most recent call last)" in out and "inspect_app.py" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_show_tool_arguments_results_and_tokens(filled: tuple[str, dict[str, str]]) -> None:
    url, ids = filled
    code, out, _ = cli(url, "show", ids["done"], columns=200)
    assert code == 0, out
    assert 'key="orders" -> stored orders' in out  # the tool's arguments and its result
    assert 'store(key="orders")' in out  # what the model response asked for
    data = json.loads(cli(url, "show", ids["done"], "--json")[1])
    assert data["state"] == "completed" and data["name"] == "clerk" and data["journal_size"] == 5
    store = next(row for row in data["journal"] if row["name"] == "tool:store")
    assert store["args"] == {"key": "orders"} and store["result"] == "stored orders"
    model = data["journal"][0]
    assert model["tokens"] == model["input_tokens"] + model["output_tokens"] > 0
    assert model["duration_ms"] >= 0 and model["calls"][0].startswith("lookup(")


def test_show_paused_rewound_and_workflow(filled: tuple[str, dict[str, str]]) -> None:
    url, ids = filled
    code, out, _ = cli(url, "show", ids["paused"])
    assert code == 0 and "status     paused" in out
    assert "waiting for approval" in out and "transfer  call c-transfer" in out
    assert 'args {"amount":100,"to":"bob"}' in out

    code, out, _ = cli(url, "show", ids["rewound"])
    assert code == 0 and "rewound to step 1" in out and "~ superseded by a rewind" in out
    assert [line.split()[0] for line in out.splitlines() if line.strip()[:2] in ("2~", "3~", "4~")] == [
        "2~",
        "3~",
        "4~",
    ]
    assert "saved      1 request, " in out and "attempts   2 (1 resume)" in out

    code, out, _ = cli(url, "show", ids["workflow"])
    assert code == 0 and "workflow   inspect-pipeline" in out
    assert "agent run clerk" in out and "step:fetch_topic" in out


def test_steps_json_has_every_field(filled: tuple[str, dict[str, str]]) -> None:
    url, ids = filled
    code, out, _ = cli(url, "steps", ids["rewound"], "--json")
    assert code == 0
    entries = json.loads(out)
    assert [e["seq"] for e in entries] == list(range(9))
    assert {"execution_id", "seq", "kind", "name", "key", "result", "started_at", "finished_at"} <= set(
        entries[0]
    )
    assert [e["seq"] for e in entries if e["superseded"]] == [2, 3, 4]
    assert entries[5]["kind"] == "rewind"
    code, out, _ = cli(url, "steps", ids["rewound"])
    assert code == 0 and "model#1" in out and "rewind#1" in out


def test_output_of_completed_and_of_other_runs(filled: tuple[str, dict[str, str]]) -> None:
    url, ids = filled
    assert cli(url, "output", ids["done"])[:2] == (0, "Stored the orders: 3 found, total 120.50 EUR.\n")
    assert json.loads(cli(url, "output", ids["done"], "--json")[1]) == (
        "Stored the orders: 3 found, total 120.50 EUR."
    )
    code, out, err = cli(url, "output", ids["paused"])
    assert code == 1 and out == "" and "is paused, not completed" in err and len(err.splitlines()) == 1


def test_list_filters_search_and_pages(filled: tuple[str, dict[str, str]]) -> None:
    url, ids = filled

    def listed(*args: str) -> dict[str, object]:
        code, out, err = cli(url, "list", "--json", *args)
        assert code == 0, err
        data: dict[str, object] = json.loads(out)
        return data

    def found(*args: str) -> set[str]:
        return {row["execution_id"] for row in listed(*args)["executions"]}  # type: ignore[attr-defined]

    assert found() == set(ids.values())
    assert found("--status", "failed", "--status", "paused") == {ids["failed"], ids["paused"]}
    assert found("--name", "inspect-pipeline") == {ids["workflow"]}
    assert found("--search", "CONNECTION RESET") == {ids["failed"]}
    assert found("--search", ids["paused"][-8:]) == {ids["paused"]}
    assert found("--since", "1h") == set(ids.values()) and found("--until", "1h") == set()
    assert found("--since", "2000-01-01", "--until", "2999-01-01T00:00:00+00:00") == set(ids.values())
    first = listed("--limit", "2")
    assert first["total"] == 5 and len(first["executions"]) == 2  # type: ignore[arg-type]
    seen: list[str] = []
    cursor = None
    while True:
        code, out, _ = cli(url, "list", "--limit", "2", *(["--cursor", cursor] if cursor else []))
        assert code == 0
        seen += [line.split()[0] for line in out.splitlines() if line[:8].isdigit()]
        nxt = [line for line in out.splitlines() if line.startswith("next page: ")]
        if not nxt:
            break
        cursor = nxt[0].split("--cursor ")[1]
        assert "--limit 2" in nxt[0]
    assert sorted(seen) == sorted(ids.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--since", "yesterday"], "--since: 'yesterday' is neither"),
        (["list", "--cursor", "bogus"], "cursor"),
        (["list", "--since", "1h", "--until", "2h"], "--until"),
        (["list", "--limit", "0"], "--limit"),
    ],
)
def test_list_usage_errors_are_exit_2(
    filled: tuple[str, dict[str, str]], args: list[str], message: str
) -> None:
    code, _, err = cli(filled[0], *args)
    assert code == 2 and message in err, err


def perdure(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environ["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS)])
    return subprocess.run(
        [sys.executable, "-m", "perdure.cli", *args],
        capture_output=True,
        text=True,
        env={**environ, **(env or {})},
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
def test_real_processes_exit_codes_and_80_columns(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = backend_url(kind, tmp_path, request)
    ids = _fill(url)
    # Each command is a new interpreter (~1.5 s here): SQLite runs every command in both layouts;
    # the server backends, whose rendering is the same code, run the list and one show.
    full = kind == "sqlite"
    envs = ({"COLUMNS": "80"}, {}) if full else ({"COLUMNS": "80"},)  # 80 columns, and a pipe
    shown = list(ids.values()) if full else [ids["failed"]]
    for env in envs:
        for args in (["list"], *(["show", i] for i in shown), *([["steps", ids["rewound"]]] if full else [])):
            done = perdure(*args, "-s", url, env=env)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert max(len(line) for line in lines) <= 80, done.stdout
            if args == ["list"]:
                assert {line.split()[0] for line in lines if line[:8].isdigit()} == set(ids.values())
            else:
                assert args[1] in done.stdout
    assert perdure("output", ids["done"], "-s", url).stdout.startswith("Stored the orders")
    not_done = perdure("output", ids["failed"], "-s", url)
    assert not_done.returncode == 1 and not_done.stderr.startswith("error: ")
    for command in ("show", "steps", "output") if full else ("show",):
        missing = perdure(command, "20000101000000-deadbeef", "-s", url)
        assert missing.returncode == 3, missing.stderr
        assert len(missing.stderr.splitlines()) == 1 and "not found" in missing.stderr
    assert perdure("list", "-s", url, "--status", "nope").returncode == 2
    listed = json.loads(perdure("list", "-s", url, "--json", "--status", "failed").stdout)
    assert [row["execution_id"] for row in listed["executions"]] == [ids["failed"]]
