"""Crash fuzzing: kill -9 durable executions at random points, resume them, check the invariants.

Run it with::

    .venv/bin/python benchmarks/crash_fuzz.py --backend sqlite --kills 50 --seed 123
    .venv/bin/python benchmarks/crash_fuzz.py --backend redis --url redis://127.0.0.1:6379/0 --kills 20

For each execution the harness starts the agent of `crash_fuzz_app.py` in a process with a kill
plan drawn from the seed, then resumes it in new processes, each with its own kill plan (or, with
some probability, none), until it completes. When a process was killed inside the non-idempotent
tool, the next resume stops with `NonIdempotentReplayError` and the execution is `paused` with a
`non_idempotent` pending call: the harness then acts as the operator, reads the e-mail ledger to see
whether the call took effect, and resumes with `ToolResolution.done(result)` or `.rerun()`.

After each execution it checks, and counts every failure as a violation:

- the execution ended `completed`, with the output of an uninterrupted baseline run;
- head and journal load without `CorruptRecordError`; journal seqs are 0..n-1 and the head counts
  n entries; every journal key is unique; every tool call of a journaled model response has exactly
  one journaled result, and the journal holds as many model requests and tool calls as the baseline;
- the payment API recorded exactly one effect per idempotent tool call (dedup hits are allowed);
- the non-idempotent tool took effect exactly once per call;
- every process ran only units that were not journaled when it started: its model requests are
  exactly the next ones after the journaled ones, and no journaled tool call ran again; a process
  that completed reports as many replayed units as were journaled;
- in total, units ran again at most once per kill (a kill interrupts at most one unit).

Jobs run in a fork server by default (`--spawn fork`): one process imports pydantic-ai and perdure
once, then forks a fresh child per job, which saves the ~1.5 s import per process on this machine.
`--spawn exec` starts a new interpreter for every job instead. The exit code is 1 when any
violation was found; with violations the working directory is kept for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
APP = HERE / "crash_fuzz_app.py"
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
if SRC.is_dir():
    sys.path.insert(0, str(SRC))

import crash_fuzz_app as app  # noqa: E402
from perdure.durable._keys import (  # noqa: E402
    TOOL,
    call_key,
    is_decision_for,
    is_started_marker_for,
    legacy_call_key,
    parse_call_key,
    started_key,
)
from perdure.errors import PerdureError  # noqa: E402
from perdure.records import ExecutionRecord, ExecutionStatus, StepKind, StepRecord  # noqa: E402
from perdure.storage import DurableExecutionStorage, storage_from_url  # noqa: E402

BACKENDS = ("sqlite", "file", "redis", "postgres")
NO_KILL_PROBABILITY = 0.15
MAX_PROCESSES = 40
"""Processes per execution before the harness gives up (a violation: it should have completed)."""
KILL_FREE_AFTER = 25
"""From this process on, an execution is resumed without kill plans so that it can finish."""

# Relative weights of the kill-point kinds; backend-specific ones only apply to their backend.
WEIGHTS: dict[str, float] = {
    "delay": 3.0,
    "model": 1.5,
    "idem-before": 1.0,
    "idem-after": 1.5,
    "nonidem-before": 1.2,
    "nonidem-after": 1.5,
    "pure": 0.7,
    "append-before": 1.2,
    "append-after": 1.2,
    "save-before": 0.5,
    "save-after": 0.5,
    "lease-after": 0.4,
    "file-head": 1.0,
    "file-torn": 1.0,
    "sqlite-commit": 1.0,
}
ONLY_FOR = {"file-head": "file", "file-torn": "file", "sqlite-commit": "sqlite"}


# ---- launching processes ------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one process ended: killed by its plan, or with the result dict it reported."""

    killed: bool
    result: dict[str, Any] | None
    signal: int | None = None
    exit: int | None = None


class Launcher(Protocol):
    """Runs one job in a new process and reports how it ended."""

    def run(self, job: app.Job) -> Outcome:
        """Run `job` to its end (completion, pause, error or kill)."""
        ...

    def close(self) -> None:
        """Stop helper processes."""
        ...


def _child_env() -> dict[str, str]:
    paths = [str(HERE), str(SRC), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


class ForkLauncher:
    """Jobs run in children forked by one long-lived server process (`crash_fuzz_app.py serve`)."""

    def __init__(self, backend: str, log: Path) -> None:
        self._log = log.open("ab")
        self._server = subprocess.Popen(
            [sys.executable, str(APP), "serve", backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=_child_env(),
        )
        ready = self._readline()
        if not json.loads(ready).get("ready"):
            raise RuntimeError(f"fork server did not start: {ready!r}")

    def _readline(self) -> str:
        assert self._server.stdout is not None
        line = self._server.stdout.readline()
        if not line:
            code = self._server.wait(timeout=30)
            raise RuntimeError(f"fork server exited with {code}; see {self._log.name}")
        return line

    def run(self, job: app.Job) -> Outcome:
        """Send the job to the server and wait for the forked child's end."""
        assert self._server.stdin is not None
        self._server.stdin.write(json.dumps(asdict(job)) + "\n")
        self._server.stdin.flush()
        data = json.loads(self._readline())
        return Outcome(data["killed"], data["result"], data["signal"], data["exit"])

    def close(self) -> None:
        """Close the server's stdin (it exits) and wait for it."""
        if self._server.stdin is not None:
            self._server.stdin.close()
        try:
            self._server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait(timeout=30)
        if self._server.stdout is not None:
            self._server.stdout.close()
        self._log.close()


class ExecLauncher:
    """Every job runs in a new Python interpreter (`crash_fuzz_app.py run JOB`)."""

    def __init__(self, backend: str, log: Path) -> None:
        self._log = log

    def run(self, job: app.Job) -> Outcome:
        """Start the interpreter, wait for it, parse the result from its last stdout line."""
        proc = subprocess.run(
            [sys.executable, str(APP), "run", json.dumps(asdict(job))],
            capture_output=True,
            text=True,
            timeout=app.JOB_TIMEOUT + 30,
            env=_child_env(),
            check=False,
        )
        with self._log.open("a") as log:
            log.write(proc.stderr)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        result = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
        sig = -proc.returncode if proc.returncode < 0 else None
        return Outcome(sig == signal.SIGKILL, result, sig, proc.returncode if proc.returncode >= 0 else None)

    def close(self) -> None:
        """Nothing to stop."""


# ---- the fuzz loop ----------------------------------------------------------------------------------


@dataclass
class Config:
    """One fuzz run."""

    backend: str
    kills: int = 50
    seed: int = 123
    url: str | None = None
    workdir: Path | None = None
    spawn: str = "fork"
    keep: bool = False
    verbose: bool = False
    script: list[dict[str, Any] | None] | None = None
    """Instead of random plans: one execution whose processes die at these plans in turn (then none).

    Reproduces a violation exactly (plans are printed with `--verbose`), and lets tests aim a kill."""


@dataclass
class Summary:
    """What a fuzz run did and found."""

    backend: str
    seed: int
    spawn: str
    executions: int = 0
    processes: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    plans_not_reached: int = 0
    resumes: int = 0
    pauses: int = 0
    resolutions: Counter[str] = field(default_factory=Counter)
    lease_waits: int = 0
    dedup_hits: int = 0
    rerun_model_requests: int = 0
    rerun_tool_calls: int = 0
    journal_ahead_of_head: int = 0
    lease_takeovers: int = 0
    decisions_asked_again: int = 0
    violations: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    workdir: str = ""

    @property
    def total_kills(self) -> int:
        """All kills, whatever their kind."""
        return sum(self.kills.values())

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON data."""
        data = asdict(self)
        data["kills"] = dict(sorted(self.kills.items()))
        data["resolutions"] = dict(self.resolutions)
        data["total_kills"] = self.total_kills
        return data

    def render(self) -> str:
        """The human-readable summary."""
        rows = [
            f"crash fuzz: backend={self.backend} seed={self.seed} spawn={self.spawn}",
            f"  executions                 {self.executions}",
            f"  processes                  {self.processes}",
            f"  kills                      {self.total_kills}",
        ]
        rows += [f"    {kind:<24} {count}" for kind, count in sorted(self.kills.items())]
        rows += [
            f"  kill plans not reached     {self.plans_not_reached}",
            f"  resumes                    {self.resumes}",
            f"  paused (non-idempotent)    {self.pauses}",
            f"  operator resolutions       {sum(self.resolutions.values())}"
            f" (done {self.resolutions['done']}, rerun {self.resolutions['rerun']})",
            f"  decisions asked again      {self.decisions_asked_again}"
            + ("  (journaled before a crash, not replayed)" if self.decisions_asked_again else ""),
            f"  payment dedup hits         {self.dedup_hits}",
            f"  model requests re-made     {self.rerun_model_requests}",
            f"  tool calls re-run          {self.rerun_tool_calls}",
            f"  journal ahead of head      {self.journal_ahead_of_head}",
            f"  dead leases taken over     {self.lease_takeovers}",
            f"  lease waits                {self.lease_waits}",
            f"  violations                 {len(self.violations)}",
            f"  wall time                  {self.wall_seconds:.1f} s",
        ]
        rows += [f"  VIOLATION: {v}" for v in self.violations[:30]]
        if len(self.violations) > 30:
            rows.append(f"  ... and {len(self.violations) - 30} more")
        if self.violations:
            rows.append(f"  working directory kept: {self.workdir}")
        return "\n".join(rows)


@dataclass
class Baseline:
    """An uninterrupted execution: what every fuzzed execution must end up with."""

    output: str
    journal_length: int
    seconds: float
    tool_counts: Counter[str]


@dataclass
class ProcessRecord:
    """What the journal held when a process started, and how the process ended."""

    proc: str
    models_before: int
    tools_before: frozenset[str]
    plan: dict[str, Any] | None
    outcome: Outcome | None = None


@dataclass
class JournalView:
    """The parts of a journal the harness plans and checks with."""

    steps: list[StepRecord]

    @property
    def models(self) -> int:
        """Journaled model requests."""
        return sum(1 for s in self.steps if s.kind is StepKind.MODEL_REQUEST)

    @property
    def tool_ids(self) -> frozenset[str]:
        """Tool call ids with a journaled result (keys are `tool:<model response ordinal>/<id>`)."""
        return frozenset(
            parsed.tool_call_id
            for s in self.steps
            if s.kind is StepKind.TOOL_CALL and (parsed := parse_call_key(s.key)) is not None
        )

    def call_keys(self) -> dict[str, str]:
        """Journal key (`tool:<m>/<id>`) of every tool call the journaled model responses asked for."""
        keys: dict[str, str] = {}
        responses = 0
        for step in self.steps:
            if step.kind is StepKind.MODEL_REQUEST and isinstance(step.result, dict):
                responses += 1
                for part in step.result.get("parts", []):
                    if part.get("part_kind") == "tool-call":
                        keys[part["tool_call_id"]] = call_key(TOOL, responses, part["tool_call_id"])
        return keys

    def tools_named(self, name: str) -> int:
        """Journaled results of tool `name`."""
        return sum(1 for s in self.steps if s.kind is StepKind.TOOL_CALL and s.name == f"tool:{name}")


def storage_url(config: Config, workdir: Path, token: str) -> str:
    """The URL of an isolated store for this run."""
    if config.backend == "sqlite":
        return f"sqlite:///{workdir / 'fuzz.db'}"
    if config.backend == "file":
        return f"file://{workdir / 'states'}"
    if not config.url:
        raise SystemExit(f"--backend {config.backend} needs --url (a server on 127.0.0.1)")
    sep = "&" if "?" in config.url else "?"
    if config.backend == "redis":
        return config.url if "prefix=" in config.url else f"{config.url}{sep}prefix=cf{token}:"
    return config.url if "table_prefix=" in config.url else f"{config.url}{sep}table_prefix=cf{token}_"


class Fuzzer:
    """Drives executions through kills, resumes and operator decisions, then checks them."""

    def __init__(self, config: Config, workdir: Path, launcher: Launcher, url: str, token: str) -> None:
        self.started = time.perf_counter()
        self.config = config
        self.workdir = workdir
        self.launcher = launcher
        self.url = url
        self.token = token
        self.rng = random.Random(config.seed)
        self.storage: DurableExecutionStorage = storage_from_url(url)
        self.summary = Summary(config.backend, config.seed, config.spawn, workdir=str(workdir))
        self.baseline: Baseline | None = None
        self._proc_no = 0

    def log(self, message: str) -> None:
        """Progress line on stderr when verbose."""
        if self.config.verbose:
            print(message, file=sys.stderr, flush=True)

    def _job(self, execution_id: str, mode: str, plan: dict[str, Any] | None, **extra: Any) -> app.Job:
        self._proc_no += 1
        return app.Job(
            url=self.url,
            backend=self.config.backend,
            execution_id=execution_id,
            ledgers=str(self.workdir / "ledgers" / execution_id),
            proc=f"p{self._proc_no}",
            mode=mode,
            plan=plan,
            **extra,
        )

    # ---- baseline -------------------------------------------------------------------------------

    def run_baseline(self) -> Baseline:
        """An uninterrupted execution on the same backend: output, journal length, duration."""
        execution_id = f"cf{self.token}-baseline"
        outcome = self.launcher.run(self._job(execution_id, "start", None))
        result = outcome.result or {}
        if outcome.killed or result.get("status") != "completed":
            raise RuntimeError(f"the baseline run did not complete: {outcome}")
        steps = self.storage.load_steps(execution_id)
        view = JournalView(steps)
        counts = Counter(
            {name: view.tools_named(name) for name in (app.IDEMPOTENT_TOOL, app.NON_IDEMPOTENT_TOOL)}
        )
        counts["pure"] = sum(view.tools_named(name) for name in app.PURE_TOOLS)
        counts["model"] = view.models
        if dict(counts) != app.BASELINE_COUNTS:
            raise RuntimeError(f"the baseline ran {dict(counts)}, expected {app.BASELINE_COUNTS}")
        self.baseline = Baseline(str(result["output"]), len(steps), float(result["seconds"]), counts)
        return self.baseline

    # ---- kill plans -----------------------------------------------------------------------------

    def plan(self, view: JournalView, processes_so_far: int) -> dict[str, Any] | None:
        """A random kill plan for the next process (None: let it run), aimed at what is left to do."""
        assert self.baseline is not None
        if self.config.script is not None:
            script = self.config.script
            return script[processes_so_far] if processes_so_far < len(script) else None
        if processes_so_far >= KILL_FREE_AFTER or self.rng.random() < NO_KILL_PROBABILITY:
            return None
        base = self.baseline.tool_counts
        idem_left = base[app.IDEMPOTENT_TOOL] - view.tools_named(app.IDEMPOTENT_TOOL)
        nonidem_left = base[app.NON_IDEMPOTENT_TOOL] - view.tools_named(app.NON_IDEMPOTENT_TOOL)
        pure_left = base["pure"] - sum(view.tools_named(n) for n in app.PURE_TOOLS)
        appends_left = max(1, self.baseline.journal_length - len(view.steps))
        left = {
            "delay": 1,
            "model": base["model"] - view.models,
            "idem-before": idem_left,
            "idem-after": idem_left,
            "nonidem-before": nonidem_left,
            "nonidem-after": nonidem_left,
            "pure": pure_left,
            "append-before": appends_left,
            "append-after": appends_left,
            "save-before": 3,
            "save-after": 3,
            "lease-after": 1,
            "file-head": appends_left + 2,
            "file-torn": appends_left,
            "sqlite-commit": appends_left + 3,
        }
        kinds = [
            k
            for k, w in WEIGHTS.items()
            if w > 0 and left[k] > 0 and ONLY_FOR.get(k, self.config.backend) == self.config.backend
        ]
        kind = self.rng.choices(kinds, weights=[WEIGHTS[k] for k in kinds])[0]
        if kind == "delay":
            horizon = max(0.02, 1.3 * self.baseline.seconds)
            return {"kind": "delay", "n": 1, "delay": round(self.rng.uniform(0.0, horizon), 4)}
        return {"kind": kind, "n": self.rng.randint(1, left[kind])}

    # ---- the operator ---------------------------------------------------------------------------

    def operator_resolutions(self, head: ExecutionRecord, view: JournalView) -> dict[str, dict[str, Any]]:
        """Decide every interrupted non-idempotent call from the e-mail ledger: sent -> done, else rerun.

        Also counts questions about a call whose latest journal entry is already a decision: a crash
        came right after the decision was journaled, and the decision was not replayed.
        """
        assert head.pending is not None
        emails = app.read_jsonl(self.workdir / "ledgers" / head.execution_id / app.EMAILS_LEDGER)
        sent = {entry["key"] for entry in emails}
        decisions: dict[str, dict[str, Any]] = {}
        for call in head.pending.calls:
            if call.tool_name != app.NON_IDEMPOTENT_TOOL:
                raise RuntimeError(f"unexpected interrupted tool {call.tool_name!r}")
            unit_key = view.call_keys().get(call.tool_call_id, legacy_call_key(TOOL, call.tool_call_id))
            if f"{head.execution_id}:{unit_key}" in sent:
                result = app.email_result(**call.args)
                decisions[call.tool_call_id] = {"action": "done", "result": result}
            else:
                decisions[call.tool_call_id] = {"action": "rerun"}
            self.summary.resolutions[decisions[call.tool_call_id]["action"]] += 1
            about = [
                s
                for s in view.steps
                if is_started_marker_for(s.key, unit_key) or is_decision_for(s.key, unit_key)
            ]
            if about and about[-1].kind is StepKind.DECISION:
                self.summary.decisions_asked_again += 1
        return decisions

    # ---- one execution ----------------------------------------------------------------------------

    def run_execution(self, index: int) -> None:
        """Drive one execution from its first process to `completed`, then check it."""
        execution_id = f"cf{self.token}-{index:03d}"
        records: list[ProcessRecord] = []
        violations: list[str] = []
        self.summary.executions += 1
        while True:
            try:
                head = self.storage.load_state(execution_id)
                view = JournalView(self.storage.load_steps(execution_id) if head is not None else [])
            except PerdureError as exc:
                violations.append(f"loading the execution failed: {type(exc).__name__}: {exc}")
                break
            if head is not None and head.status is ExecutionStatus.COMPLETED:
                break
            if len(records) >= MAX_PROCESSES:
                violations.append(
                    f"not completed after {MAX_PROCESSES} processes (status {head and head.status})"
                )
                break
            plan = self.plan(view, len(records))
            extra: dict[str, Any] = {}
            if head is None:
                mode = "start"
            else:
                mode = "resume"
                if head.status is ExecutionStatus.PAUSED:
                    if head.pending is None or head.pending.kind != "non_idempotent":
                        violations.append(f"paused without a non-idempotent pending call: {head.pending}")
                        break
                    extra["resolutions"] = self.operator_resolutions(head, view)
                elif head.status is not ExecutionStatus.SUCCESS:
                    violations.append(
                        f"unexpected status {head.status.value} before process {len(records) + 1}"
                    )
            job = self._job(execution_id, mode, plan, **extra)
            record = ProcessRecord(job.proc, view.models, view.tool_ids, plan)
            records.append(record)
            record.outcome = outcome = self.launcher.run(job)
            self.summary.processes += 1
            self.summary.resumes += mode == "resume"
            self._account(execution_id, record, outcome, violations)
        self._check(execution_id, records, violations)
        if violations:
            self.summary.violations += [f"{execution_id}: {v}" for v in violations]

    def _account(
        self, execution_id: str, record: ProcessRecord, outcome: Outcome, violations: list[str]
    ) -> None:
        plan = record.plan
        if outcome.killed:
            kind = plan["kind"] if plan else "unplanned"
            self.summary.kills[kind] += 1
            self.log(f"{execution_id} {record.proc}: killed at {plan}")
            if plan is None:
                violations.append(f"{record.proc} was killed without a kill plan")
            return
        result = outcome.result
        if result is None:
            violations.append(
                f"{record.proc} ended with signal={outcome.signal} exit={outcome.exit}, no result"
            )
            return
        if plan is not None:
            self.summary.plans_not_reached += 1
        status = result.get("status")
        self.log(f"{execution_id} {record.proc}: {status} (plan {plan})")
        if status == "paused":
            self.summary.pauses += 1
        elif status == "leased":
            self.summary.lease_waits += 1
            time.sleep(0.05)
        elif status == "completed":
            assert self.baseline is not None
            if result.get("output") != self.baseline.output:
                violations.append(
                    f"{record.proc} completed with a different output: {result.get('output')!r}"
                )
            replay = result.get("replay") or {}
            if replay.get("replayed_model_requests") != record.models_before:
                violations.append(
                    f"{record.proc} replayed {replay.get('replayed_model_requests')} model requests, "
                    f"{record.models_before} were journaled"
                )
            if replay.get("replayed_tool_calls") != len(record.tools_before):
                violations.append(
                    f"{record.proc} replayed {replay.get('replayed_tool_calls')} tool calls, "
                    f"{len(record.tools_before)} were journaled"
                )
        else:
            violations.append(
                f"{record.proc} failed: {result.get('error_type')}: {result.get('error')}\n"
                f"{result.get('traceback', '')}"
            )

    # ---- invariants -------------------------------------------------------------------------------

    def _check(self, execution_id: str, records: list[ProcessRecord], violations: list[str]) -> None:
        assert self.baseline is not None
        try:
            head = self.storage.load_state(execution_id)
            steps = self.storage.load_steps(execution_id)
        except PerdureError as exc:
            violations.append(f"stored records are unreadable: {type(exc).__name__}: {exc}")
            return
        if head is None:
            violations.append("the head record is missing")
            return
        if head.status is not ExecutionStatus.COMPLETED:
            violations.append(f"ended {head.status.value}, not completed")
        if head.status is ExecutionStatus.COMPLETED and head.output != self.baseline.output:
            violations.append(f"stored output differs from the baseline: {head.output!r}")
        if head.pending is not None or head.error is not None:
            violations.append(f"completed with pending={head.pending} error={head.error}")
        # Journal structure.
        if [s.seq for s in steps] != list(range(len(steps))):
            violations.append(f"journal seqs are not 0..n-1: {[s.seq for s in steps]}")
        if head.next_seq != len(steps):
            violations.append(f"head counts {head.next_seq} journal entries, the journal holds {len(steps)}")
        keys = Counter(s.key for s in steps)
        if dupes := [k for k, n in keys.items() if n > 1]:
            violations.append(f"journal keys appear more than once: {dupes}")
        view = JournalView(steps)
        asked: list[tuple[str, str]] = []
        for step in steps:
            if step.kind is StepKind.MODEL_REQUEST and isinstance(step.result, dict):
                asked += [
                    (p["tool_name"], p["tool_call_id"])
                    for p in step.result.get("parts", [])
                    if p.get("part_kind") == "tool-call"
                ]
        asked_ids = [call_id for _, call_id in asked]
        if len(set(asked_ids)) != len(asked_ids):
            violations.append("a tool call id appears in two model responses")
        if view.tool_ids != set(asked_ids):
            violations.append(
                f"journaled tool results {sorted(view.tool_ids)} do not match the calls asked "
                f"{sorted(asked_ids)}"
            )
        if view.models != self.baseline.tool_counts["model"]:
            violations.append(
                f"{view.models} model requests journaled, baseline {self.baseline.tool_counts['model']}"
            )
        tool_steps = sum(1 for s in steps if s.kind is StepKind.TOOL_CALL)
        if tool_steps != len(asked_ids) or len(asked_ids) != sum(
            v for k, v in self.baseline.tool_counts.items() if k != "model"
        ):
            violations.append(f"{tool_steps} tool results journaled for {len(asked_ids)} calls")
        if head.usage.requests != view.models or head.usage.tool_calls != tool_steps:
            violations.append(
                f"head usage ({head.usage.requests} requests, {head.usage.tool_calls} tool calls) does not "
                f"match the journal ({view.models}, {tool_steps})"
            )
        call_keys = view.call_keys()
        nonidem_ids = [i for name, i in asked if name == app.NON_IDEMPOTENT_TOOL]
        for call_id in nonidem_ids:
            markers = keys[started_key(call_keys[call_id])]
            if markers != 1:
                violations.append(f"non-idempotent call {call_id} has {markers} started markers")
        # External effects.
        ledgers = self.workdir / "ledgers" / execution_id
        self._check_effects(
            "payment",
            app.read_jsonl(ledgers / app.PAYMENTS_LEDGER),
            {f"{execution_id}:{call_keys[i]}" for name, i in asked if name == app.IDEMPOTENT_TOOL},
            violations,
        )
        self._check_effects(
            "e-mail",
            [{**e, "event": "effect"} for e in app.read_jsonl(ledgers / app.EMAILS_LEDGER)],
            {f"{execution_id}:{call_keys[i]}" for i in nonidem_ids},
            violations,
        )
        self._check_trace(ledgers / app.TRACE_FILE, records, violations)

    def _check_effects(
        self, what: str, entries: list[dict[str, Any]], expected: set[str], violations: list[str]
    ) -> None:
        effects = Counter(e["key"] for e in entries if e["event"] == "effect")
        self.summary.dedup_hits += sum(1 for e in entries if e["event"] == "dedup")
        for key in sorted(expected):
            if effects[key] != 1:
                violations.append(f"{what} call {key} took effect {effects[key]} times")
        if stray := sorted(set(effects) - expected):
            violations.append(f"{what} effects for calls that are not in the journal: {stray}")

    def _check_trace(self, trace: Path, records: list[ProcessRecord], violations: list[str]) -> None:
        assert self.baseline is not None
        models: dict[str, list[int]] = {r.proc: [] for r in records}
        tools: dict[str, list[str]] = {r.proc: [] for r in records}
        for line in trace.read_text().splitlines() if trace.exists() else []:
            fields = line.split()
            if fields[1] == "model":
                models[fields[0]].append(int(fields[2]))
            else:
                tools[fields[0]].append(fields[3])
        for record in records:
            ran = models[record.proc]
            expected = list(range(record.models_before + 1, record.models_before + 1 + len(ran)))
            if ran != expected:
                violations.append(
                    f"{record.proc} started with {record.models_before} journaled model requests but made "
                    f"requests {ran}"
                )
            if again := sorted(set(tools[record.proc]) & record.tools_before):
                violations.append(f"{record.proc} re-ran journaled tool calls {again}")
            if len(set(tools[record.proc])) != len(tools[record.proc]):
                violations.append(f"{record.proc} ran a tool call twice: {tools[record.proc]}")
            result = record.outcome.result if record.outcome is not None else None
            if result is not None and result.get("status") == "completed":
                executed = (result.get("replay") or {}).get("executed_model_requests")
                if executed != len(ran):
                    violations.append(
                        f"{record.proc} reports {executed} executed model requests, made {len(ran)}"
                    )
        extra_models = sum(map(len, models.values())) - self.baseline.tool_counts["model"]
        extra_tools = sum(map(len, tools.values())) - sum(
            v for k, v in self.baseline.tool_counts.items() if k != "model"
        )
        kills = sum(1 for r in records if r.outcome is not None and r.outcome.killed)
        self.summary.rerun_model_requests += extra_models
        self.summary.rerun_tool_calls += extra_tools
        if extra_models < 0 or extra_tools < 0 or extra_models + extra_tools > kills:
            violations.append(
                f"{extra_models} model requests and {extra_tools} tool calls ran again after {kills} kills "
                f"(at most one interrupted unit per kill)"
            )

    # ---- the run ----------------------------------------------------------------------------------

    def run(self) -> Summary:
        """Run executions until the kill target is reached; return the summary."""
        baseline = self.run_baseline()
        self.log(f"baseline: {baseline.journal_length} journal entries in {baseline.seconds:.3f} s")
        index = 0
        while index == 0 or (self.config.script is None and self.summary.total_kills < self.config.kills):
            index += 1
            self.run_execution(index)
        self._scan_log()
        self.summary.wall_seconds = time.perf_counter() - self.started
        return self.summary

    def _scan_log(self) -> None:
        log = self.workdir / "processes.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        self.summary.journal_ahead_of_head = text.count("but the journal holds")
        self.summary.lease_takeovers = text.count("taking over the lease")

    def cleanup(self) -> None:
        """Delete this run's executions from a shared server (files go with the working directory)."""
        if self.config.backend in ("redis", "postgres"):
            for head in self.storage.list_executions():
                if head.execution_id.startswith(f"cf{self.token}-"):
                    # Killed workers leave unexpired leases behind: the delete has to be forced.
                    self.storage.delete_state(head.execution_id, force=True)
        self.storage.close()


def run_fuzz(config: Config) -> Summary:
    """Run one fuzz campaign as configured; the working directory is kept when there are violations."""
    if config.backend not in BACKENDS:
        raise SystemExit(f"unknown backend {config.backend!r}; choose one of {', '.join(BACKENDS)}")
    token = uuid.uuid4().hex[:8]
    own_dir = config.workdir is None
    base = Path(tempfile.mkdtemp(prefix="crash-fuzz-")) if own_dir else Path(config.workdir or ".")
    workdir = (base / f"{config.backend}-{token}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    url = storage_url(config, workdir, token)
    log = workdir / "processes.log"
    started = time.perf_counter()
    launcher: Launcher = (
        ForkLauncher(config.backend, log) if config.spawn == "fork" else ExecLauncher(config.backend, log)
    )
    fuzzer = Fuzzer(config, workdir, launcher, url, token)
    fuzzer.started = started  # the wall time includes starting the fork server
    try:
        summary = fuzzer.run()
    finally:
        launcher.close()
    if not summary.violations:
        fuzzer.cleanup()
        if own_dir and not config.keep:
            shutil.rmtree(base, ignore_errors=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit code 1 when any invariant was violated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite")
    parser.add_argument("--kills", type=int, default=50, help="stop once this many processes were killed")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--url", help="server URL for redis / postgres (127.0.0.1)")
    parser.add_argument("--workdir", type=Path, help="where stores and ledgers go (default: a temp dir)")
    parser.add_argument("--spawn", choices=("fork", "exec"), default="fork")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per process on stderr")
    parser.add_argument(
        "--script",
        type=json.loads,
        help='one execution with these kill plans, e.g. \'[{"kind": "nonidem-after", "n": 1}, null]\'',
    )
    args = parser.parse_args(argv)
    config = Config(
        backend=args.backend,
        kills=args.kills,
        seed=args.seed,
        url=args.url,
        workdir=args.workdir,
        spawn=args.spawn,
        keep=args.keep,
        verbose=args.verbose,
        script=args.script,
    )
    summary = run_fuzz(config)
    print(json.dumps(summary.to_json()) if args.json else summary.render())
    return 1 if summary.violations else 0


if __name__ == "__main__":
    sys.exit(main())
