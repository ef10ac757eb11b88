"""The README's code runs as written.

Every fenced ```python and ```bash block of README.md is classified by the HTML comment on the line
before it:

- `<!-- file: NAME -->`: a file of the quick start, written to NAME from the README text itself;
- `<!-- run: quickstart -->`: the quick start's shell commands, run line by line against those files;
- `<!-- not run: REASON -->`: an illustration (needs an API key, a server, minutes); never run;
- nothing: a ```python block, run as a script in its own empty temporary directory (subprocess,
  API keys removed from the environment, so only offline models work). It must exit 0.

An unmarked ```bash block fails the suite: it must be run or say why not. So the README cannot
drift from the code: a snippet that stops working fails here, not in a reader's terminal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples" / "quickstart"
TIMEOUT = 60

_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)[ ]*\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S
)
_MARKER = re.compile(r"^<!--\s*(?P<kind>file|run|not run):\s*(?P<arg>.*?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    line: int
    lang: str
    code: str
    marker: str | None
    """`file`, `run` or `not run` (None when unmarked)."""
    arg: str

    @property
    def label(self) -> str:
        first = next((ln for ln in self.code.splitlines() if ln.strip()), "")
        return f"README.md:{self.line} {first[:50]}"


def parse(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, dedented, with the marker comment before each."""
    blocks = []
    for match in _FENCE.finditer(text):
        indent = len(match["indent"])
        lines = match["body"].splitlines(keepends=True)
        code = "".join(ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines)
        before = [ln.strip() for ln in text[: match.start()].splitlines() if ln.strip()]
        marker = _MARKER.match(before[-1]) if before else None
        blocks.append(
            Block(
                line=text.count("\n", 0, match.start()) + 1,
                lang=match["lang"],
                code=code,
                marker=marker["kind"] if marker else None,
                arg=marker["arg"] if marker else "",
            )
        )
    return blocks


BLOCKS = parse(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.lang == "python" and b.marker is None]


def _env() -> dict[str, str]:
    """The environment of README code: no API keys (offline models only), no quick-start crash switch."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not re.search(r"API_KEY|_TOKEN|SECRET", k) and k != "CRASH_BEFORE_RECEIPT"
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _python_on_path(tmp: Path) -> str:
    """A PATH whose `python` is this interpreter, as the README's shell commands expect."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def _show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# ---- the parser ------------------------------------------------------------------------------------


def test_parser_reads_markers_and_indented_blocks() -> None:
    text = (
        "intro\n\n<!-- not run: needs OPENAI_API_KEY -->\n```python\nimport openai\n```\n\n"
        "<!-- file: app.py -->\n```python\nX = 1\n```\n\n"
        "- a list item:\n\n  ```python\n  if True:\n      print(1)\n  ```\n\n"
        "```\nplain text\n```\n"
    )
    blocks = parse(text)
    assert [(b.lang, b.marker, b.arg) for b in blocks] == [
        ("python", "not run", "needs OPENAI_API_KEY"),
        ("python", "file", "app.py"),
        ("python", None, ""),
        ("", None, ""),
    ]
    assert blocks[2].code == "if True:\n    print(1)\n"
    assert blocks[0].line == 4


# ---- every block is accounted for -----------------------------------------------------------------


def test_every_block_is_run_or_marked() -> None:
    problems = []
    for block in BLOCKS:
        if block.lang not in ("python", "bash"):
            continue  # layout trees and other text
        if block.marker == "not run" and not block.arg:
            problems.append(f"{block.label}: `not run:` needs a reason")
        if block.lang == "bash" and block.marker is None:
            problems.append(f"{block.label}: a bash block must be `run: quickstart` or `not run: REASON`")
        if block.marker == "run" and block.arg != "quickstart":
            problems.append(f"{block.label}: unknown run target {block.arg!r}")
        if block.marker == "file" and block.lang != "python":
            problems.append(f"{block.label}: file blocks are python")
    assert not problems, "\n".join(problems)
    fences = re.findall(r"^[ ]*```", README.read_text(encoding="utf-8"), re.M)
    assert len(fences) == 2 * len(BLOCKS), "a fence is not on a line of its own (text after a closing ```?)"
    files = sorted(b.arg for b in BLOCKS if b.marker == "file")
    assert files == ["app.py", "resume.py"]
    assert len([b for b in BLOCKS if b.marker == "run"]) == 1
    assert len(RUNNABLE) >= 8, "the README lost its runnable examples"


def test_readme_has_no_stale_claims() -> None:
    text = README.read_text(encoding="utf-8")
    assert "imported again on resume" not in text  # tools are never imported by their recorded path
    assert "await durable" not in text.split("async def main")[0]  # no top-level await before a main()
    for block in RUNNABLE:
        assert "._agent_run_output" not in block.code, block.label  # use agent.last_run_output


def test_examples_are_the_readme_files() -> None:
    for block in BLOCKS:
        if block.marker == "file":
            example = (EXAMPLES / block.arg).read_text(encoding="utf-8")
            assert example == block.code, f"examples/quickstart/{block.arg} differs from {block.label}"


# ---- the python blocks run ------------------------------------------------------------------------


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"line{b.line}" for b in RUNNABLE])
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, f"{block.label} does not run as written:\n{_show(proc)}"


# ---- the quick start ------------------------------------------------------------------------------


def _ledger(directory: Path) -> Counter[str]:
    path = directory / "ledger.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split(" ", 1)[0] for line in lines)


def test_quickstart_crashes_then_resumes_without_repeating_tools(tmp_path: Path) -> None:
    work = tmp_path / "project"
    work.mkdir()
    for block in BLOCKS:
        if block.marker == "file":
            (work / block.arg).write_text(block.code, encoding="utf-8")
    (commands_block,) = [b for b in BLOCKS if b.marker == "run" and b.arg == "quickstart"]
    commands = [ln.split("#", 1)[0].strip() for ln in commands_block.code.splitlines()]
    commands = [c for c in commands if c]
    assert len(commands) == 3, commands
    env = {**_env(), "PATH": _python_on_path(tmp_path)}

    def sh(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )

    started = time.monotonic()
    first = sh(commands[0])
    assert first.returncode != 0, f"the first run should crash on purpose:\n{_show(first)}"
    assert "crashing on purpose" in first.stdout, _show(first)
    assert _ledger(work) == {"fetch_orders": 1, "charge_total": 1}, "tools before the crash ran once"
    execution_id = re.search(r"^execution (\S+)$", first.stdout, re.M)
    assert execution_id is not None, _show(first)

    resume = sh(commands[1])
    assert resume.returncode == 0, f"the resume should complete:\n{_show(resume)}"
    claim = "replayed 2 tool calls, executed 1"
    assert claim in resume.stdout, _show(resume)
    assert f"`{claim}`" in README.read_text(encoding="utf-8"), "the README states what resume.py prints"
    assert "Completed 3 steps" in resume.stdout, _show(resume)
    assert _ledger(work) == {"fetch_orders": 1, "charge_total": 1, "send_receipt": 1}

    show = sh(commands[2])
    assert show.returncode == 0, _show(show)
    assert len(show.stdout.splitlines()) == 3, "cat ledger.txt: one line per tool"

    # The id can also be given on the command line.
    again = sh(commands[0])
    assert again.returncode != 0, _show(again)
    second_id = re.search(r"^execution (\S+)$", again.stdout, re.M)
    assert second_id is not None and second_id[1] != execution_id[1]
    by_id = sh(f"python resume.py {second_id[1]}")
    assert by_id.returncode == 0, _show(by_id)
    assert claim in by_id.stdout, _show(by_id)
    assert _ledger(work) == {"fetch_orders": 2, "charge_total": 2, "send_receipt": 2}
    assert time.monotonic() - started < TIMEOUT
