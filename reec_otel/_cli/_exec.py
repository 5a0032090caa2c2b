"""``reec-otel exec``: run a program as one job.

The run is one :class:`~reec_otel.Worker` run whose run function starts the
program and waits for it. Standard output and input are the program's own;
standard error is relayed byte for byte while its last lines are kept for the
row. The program receives the job's context as ``TRACEPARENT`` (and
``TRACESTATE``, ``BAGGAGE``), the environment-variable form of the configured
propagators, and a ``TRACEPARENT`` given to ``reec-otel`` itself is continued.

Exit codes: the program's own; 128+N when it was killed by signal N; 124 on
timeout; 127 when it could not be started.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Final

import click
from opentelemetry import context as otel_context
from opentelemetry import propagate

import reec_otel
from reec_otel import JobContext
from reec_otel._cli._common import Settings, database_url_option

EXIT_TIMEOUT: Final = 124
EXIT_CANNOT_START: Final = 127
FORWARDED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STDERR_TAIL_LINES: Final = 20
STDERR_TAIL_BYTES: Final = 8192
KILL_GRACE_SECONDS: Final = 10.0
# How long standard error may stay open after the program ended (a background
# process it left behind may hold it) before the relay is left to finish alone.
_RELAY_DRAIN_SECONDS: Final = 2.0
_CARRIER_VARIABLES: Final = ("TRACEPARENT", "TRACESTATE", "BAGGAGE")


class ProgramFailed(Exception):
    """The program ended unsuccessfully: a non-zero status, a signal or a timeout."""


class _StderrRelay:
    """Copies the program's standard error to ours and keeps its last bytes."""

    def __init__(self, stream: object) -> None:
        self._stream = stream
        self._tail = bytearray()
        self._thread = threading.Thread(target=self._run, name="reec-otel-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Without a standard error of our own (a daemon started with it closed)
        # or when writing to it fails, the pipe is still drained to the end: a
        # program whose pipe fills up would block for ever.
        target = getattr(sys.stderr, "buffer", None)
        read = self._stream.read1  # type: ignore[attr-defined]
        while chunk := read(65_536):
            if target is not None:
                with contextlib.suppress(OSError, ValueError):
                    target.write(chunk)
                    target.flush()
            self._tail += chunk
            del self._tail[:-STDERR_TAIL_BYTES]

    def tail(self) -> str:
        self._thread.join(_RELAY_DRAIN_SECONDS)
        lines = bytes(self._tail).decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-STDERR_TAIL_LINES:])


class Program:
    """One program run: started by the job, signalled from outside, timed out."""

    def __init__(self, argv: Sequence[str], timeout_seconds: float | None) -> None:
        self.argv = list(argv)
        self.timeout_seconds = timeout_seconds
        self.exit_code = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._pending_signal: int | None = None
        self._lock = threading.Lock()
        self._own_group = True

    def forward(self, signum: int, _frame: FrameType | None = None) -> None:
        """Pass a signal on to the program (kept until it has started).

        Away from a terminal the program has a process group of its own and the
        signal goes to the whole group. At a terminal the program shares the
        terminal's foreground group, which Ctrl-C already reaches: SIGINT is
        then not sent a second time.
        """
        with self._lock:
            process = self._process
            if process is None:
                self._pending_signal = signum
                return
        if not self._own_group and signum == signal.SIGINT:
            return  # the terminal delivered Ctrl-C to the program itself
        self._signal_group(process, signum)

    def _signal_group(self, process: subprocess.Popen[bytes], signum: int) -> None:
        # Once the program is reaped its pid, the group's id, may be reused.
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                if not self._own_group:
                    process.send_signal(signum)
                    return
                os.killpg(process.pid, signum)
                # A stopped process acts on the signal only once continued
                # (as a shell's kill does for a stopped job).
                os.killpg(process.pid, signal.SIGCONT)

    def run(self, ctx: JobContext) -> None:
        """The job's run function: start the program and wait for its end."""
        ctx.data["program"] = os.path.basename(self.argv[0])
        # Away from a terminal (cron, CI, a service) the program gets a process
        # group of its own, so that a timeout or a forwarded signal reaches what
        # it started too. At a terminal it stays in the terminal's foreground
        # group, so that it can read the terminal and Ctrl-C and Ctrl-Z reach it.
        # TODO: at a terminal a timeout stops the program alone, not what it
        # started; job control as shells do it (tcsetpgrp) would give the
        # program its own group there too.
        self._own_group = not _stdin_is_terminal()
        try:
            process = subprocess.Popen(
                self.argv,
                env=_child_environment(),
                stderr=subprocess.PIPE,
                process_group=0 if self._own_group else None,
            )
        except OSError as exc:
            self.exit_code = EXIT_CANNOT_START
            click.echo(f"reec-otel: cannot start {self.argv[0]!r}: {exc.strerror or exc}", err=True)
            raise
        relay = _StderrRelay(process.stderr)
        ctx.data["pid"] = process.pid
        with self._lock:
            self._process = process
            pending, self._pending_signal = self._pending_signal, None
        if pending is not None:
            self.forward(pending)
        timed_out = self._wait(process)
        returncode = process.returncode
        self.exit_code = EXIT_TIMEOUT if timed_out else _exit_code(returncode)
        ctx.data["exit_code"] = self.exit_code
        if returncode != 0 or timed_out:
            raise ProgramFailed(self._failure(returncode, timed_out, relay.tail()))
        relay.tail()

    def _wait(self, process: subprocess.Popen[bytes]) -> bool:
        """Wait for the program; True if it ran out of time and was stopped."""
        try:
            process.wait(self.timeout_seconds)
        except subprocess.TimeoutExpired:
            # The whole group: processes the program started go with it.
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait()
            return True
        return False

    def _failure(self, returncode: int, timed_out: bool, stderr_tail: str) -> str:
        program = os.path.basename(self.argv[0])
        if timed_out:
            what = f"{program} timed out after {self.timeout_seconds:g} s and was stopped"
        elif returncode < 0:
            what = f"{program} was killed by signal {_signal_name(-returncode)} ({-returncode})"
        else:
            what = f"{program} exited with status {returncode}"
        if stderr_tail:
            return f"{what}.\nLast lines of its standard error:\n{stderr_tail}"
        return what


def _stdin_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdin.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _finite_seconds(value: float | None) -> float | None:
    # FloatRange compares, and nan compares false with every bound.
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number of seconds.")
    return value


def _child_environment() -> dict[str, str]:
    """Our environment with the current (job) context as TRACEPARENT and friends."""
    env = {k: v for k, v in os.environ.items() if k not in _CARRIER_VARIABLES}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    env.update({key.upper(): value for key, value in carrier.items()})
    return env


@contextlib.contextmanager
def _incoming_context() -> Iterator[None]:
    """Continue the trace of a TRACEPARENT given to us, if any."""
    carrier = {k.lower(): os.environ[k] for k in _CARRIER_VARIABLES if os.environ.get(k)}
    if not carrier:
        yield
        return
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def _signals_forwarded_to(program: Program) -> Iterator[None]:
    previous = {signum: signal.signal(signum, program.forward) for signum in FORWARDED_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@click.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--name", "name_job", required=True, help="The job's name, on its span and rows.")
@click.option("--light", is_flag=True, help="Record only a failure (light execution).")
@click.option("--user", "create_user", help="Who started the job, stored on every row.")
@click.option(
    "--timeout",
    "timeout_seconds",
    type=click.FloatRange(min=0, min_open=True),
    callback=lambda _ctx, _param, value: _finite_seconds(value),
    metavar="SECONDS",
    help=f"Stop the program and the processes it started (SIGTERM to its process group, "
    f"then SIGKILL after {KILL_GRACE_SECONDS:g} s) after this long; exit code {EXIT_TIMEOUT}.",
)
@click.option("--app", "application_name", help="Application name (default: as configure()).")
@database_url_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
def exec_command(
    ctx: click.Context,
    name_job: str,
    light: bool,
    create_user: str | None,
    timeout_seconds: float | None,
    application_name: str | None,
    database_url: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as one job, recorded in LogJob and traced.

    The program's exit code is this command's exit code (128+N if killed by
    signal N, 124 on timeout, 127 if it cannot be started); its output passes
    through. It runs in a process group of its own: SIGINT, SIGTERM and SIGHUP
    are forwarded to that group, and the run is recorded before reec-otel
    exits. The program gets the job's trace context in TRACEPARENT.

    \b
    Examples:
      reec-otel exec --name etc-backup -- tar czf /var/backups/etc.tgz /etc
      # crontab: every night at 02:30, stopped after one hour
      30 2 * * * reec-otel exec --name nightly-report --timeout 3600 -- /opt/app/report.sh
    """
    settings = Settings.resolve(database_url, application_name)
    program = Program(command, timeout_seconds)
    # Signals are caught from here to the last row written: one that arrives
    # before the program starts is passed on as soon as it has started, and
    # one that arrives after it ended does not cut the writing short (the
    # shutdown has its own deadline).
    with _signals_forwarded_to(program):
        handle = settings.configure()
        worker = reec_otel.Worker(
            name_job, is_light_execution=light, create_user=create_user, run_function=program.run
        )
        try:
            with _incoming_context():
                worker.execute()
        finally:
            handle.shutdown()
    ctx.exit(program.exit_code)
