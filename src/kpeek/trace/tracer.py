"""Run a command under ptrace and snapshot the descriptor tables of it and
every descendant after each syscall that changes them.

The tracee starts stopped (PTRACE_TRACEME, then SIGSTOP before execve), so
the execve itself is the first recorded step. Fork, vfork and clone are
followed through ptrace events: the new process is recorded at the parent's
event stop, before either of them runs on. Whatever happens (an error, a
timeout, Ctrl-C), every tracee is killed and reaped before run() returns;
PTRACE_O_EXITKILL kills them even if kpeek itself is killed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import time
from dataclasses import field

from kpeek.errors import KpeekError, UsageError
from kpeek.model import Snapshot
from kpeek.records import record
from kpeek.sources import procfs
from kpeek.sources.proc_tasks import Vanished, parse_status, read_bytes
from kpeek.trace import ptrace, syscalls
from kpeek.trace.ptrace import TraceeGone

DEFAULT_MAX_STEPS = 10000


@record(frozen=True)
class Step:
    """One recorded moment: a syscall (or start/exit) and the tables after it."""

    index: int
    pid: int  # the thread that made the call
    tgid: int
    comm: str
    syscall: str  # a syscall name, "start" or "exit"
    args: tuple[str, ...]
    result: int | None
    result_text: str | None
    snapshot: Snapshot
    replaced: frozenset[tuple[int, int]] = frozenset()  # (tgid, fd) slots dup2 overwrote
    elapsed: float = 0.0  # seconds since the trace started

    @property
    def call(self) -> str:
        if self.syscall == "start":
            return self.args[0] if self.args else "start"
        return f"{self.syscall}({', '.join(self.args)})"

    @property
    def failed(self) -> bool:
        return self.result is not None and self.result < 0


@record
class Trace:
    command: list[str]
    steps: list[Step] = field(default_factory=list)
    exit_status: int | None = None  # as a shell shows it: code, or 128+signal
    stopped: str | None = None  # why tracing ended early: "timeout", "interrupted"
    notes: list[str] = field(default_factory=list)


class _Timeout(Exception):
    pass


@record
class _Pending:
    name: str
    raw: tuple[int, ...]
    args: list[str]
    recorded: bool = False


class Tracer:
    """Traces ``argv``; call run() once."""

    def __init__(self, argv: list[str], *, io: bool = False, timeout: float | None = None,
                 max_steps: int = DEFAULT_MAX_STEPS, stdout_to_stderr: bool = False) -> None:
        if not argv:
            raise UsageError("trace: no command given (kpeek trace -- COMMAND [ARGS])")
        exe = shutil.which(argv[0])
        if exe is None:
            raise UsageError(f"trace: command not found: {argv[0]}")
        self.exe = exe
        self.argv = argv
        self.io = io
        self.timeout = timeout
        self.max_steps = max_steps
        self.stdout_to_stderr = stdout_to_stderr
        self.trace = Trace(command=list(argv))
        self.tgid_of: dict[int, int] = {}  # every live traced thread -> its process
        self.exited_tgids: set[int] = set()
        self.comm: dict[int, str] = {}
        self.pending: dict[int, _Pending] = {}
        self.held: set[int] = set()  # new tracees stopped before their parent's event
        self.expect_stop: set[int] = set()  # new tracees whose first SIGSTOP is ours
        self.leader = 0
        self.execed = False  # the command itself started (its execve succeeded)
        self.started = 0.0

    # -- running ---------------------------------------------------------

    def run(self) -> Trace:
        """Run the command to its end (or the timeout) and return the steps.

        Raises NotPermitted when ptrace is refused. Tracees never outlive it.
        """
        previous, armed = None, False
        try:
            self._spawn()
            if self.timeout:  # armed after fork: an alarm inside fork() would be lost
                previous, armed = signal.signal(signal.SIGALRM, self._on_alarm), True
                signal.setitimer(signal.ITIMER_REAL, self.timeout)
            self._loop()
            if not self.execed:
                raise KpeekError(f"trace: cannot run {self.argv[0]} (see the message above)")
        except _Timeout:
            self.trace.stopped = "timeout"
            self.trace.notes.append(f"stopped after {self.timeout:g}s: tracees killed")
        except KeyboardInterrupt:
            self.trace.stopped = "interrupted"
            self._kill_all()
            raise
        finally:
            if armed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous or signal.SIG_DFL)
            self._kill_all()
        return self.trace

    @staticmethod
    def _on_alarm(signum: int, frame: object) -> None:
        raise _Timeout()

    def _spawn(self) -> None:
        read_err, write_err = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            report = write_err
            try:
                os.close(read_err)
                if self.stdout_to_stderr:  # kpeek's stdout carries JSON: keep it clean
                    os.dup2(2, 1)
                ptrace.traceme()
                # Close the error pipe before the first traced moment, so it
                # is not in the drawings; later errors go to stderr.
                os.close(write_err)
                report = 2
                os.kill(os.getpid(), signal.SIGSTOP)
                os.execv(self.exe, self.argv)
            except BaseException as e:  # report anything, then exit
                with contextlib.suppress(BaseException):
                    message = f"kpeek trace: cannot run {self.argv[0]}: {e}\n"
                    os.write(report, message.encode("utf-8", "replace")[:600])
            os._exit(127)
        os.close(write_err)
        self.leader = pid
        self.started = time.monotonic()
        _, status = os.waitpid(pid, ptrace.WALL)
        if not os.WIFSTOPPED(status):
            message = os.read(read_err, 600).decode("utf-8", "replace").strip()
            os.close(read_err)
            raise KpeekError(message or f"trace: cannot start {self.argv[0]}")
        os.close(read_err)
        ptrace.set_options(pid)
        self.tgid_of[pid] = pid
        self.comm[pid] = self.argv[0]
        self._record(pid, "start", (f"kpeek starts {self.argv[0]}",), None, None)
        ptrace.resume(pid)

    def _loop(self) -> None:
        while self.tgid_of or self.held:
            if not self.tgid_of:
                self._adopt_held()  # never leave a tracee stopped with no one to wait for
            try:
                tid, status = os.waitpid(-1, ptrace.WALL)
            except ChildProcessError:
                return
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._gone(tid, status)
                continue
            if not os.WIFSTOPPED(status):
                continue
            sig = os.WSTOPSIG(status)
            event = status >> 16
            try:
                self._stopped(tid, sig, event)
            except TraceeGone:
                self._forget(tid)

    def _adopt_held(self) -> None:
        for tid in sorted(self.held):
            self.tgid_of[tid] = _tgid_of(tid)
            ptrace.resume(tid)
        self.held.clear()

    def _stopped(self, tid: int, sig: int, event: int) -> None:
        if tid not in self.tgid_of:
            # A new tracee whose parent's fork event we have not seen yet:
            # keep it stopped so the fork step shows its table as inherited.
            self.held.add(tid)
            return
        if sig == signal.SIGTRAP | 0x80:
            self._syscall_stop(tid)
            ptrace.resume(tid)
        elif sig == signal.SIGTRAP and event:
            self._event(tid, event)
            ptrace.resume(tid)
        elif sig == signal.SIGSTOP and tid in self.expect_stop:
            self.expect_stop.discard(tid)
            ptrace.resume(tid)
        elif sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU) and \
                ptrace.is_group_stop(tid):
            ptrace.resume(tid)  # a job-control stop: let it run on
        else:
            ptrace.resume(tid, sig)  # deliver the signal it was going to get

    def _syscall_stop(self, tid: int) -> None:
        info = ptrace.syscall_info(tid)
        names = syscalls.NAMES.get(info.arch)
        if info.op == ptrace.SYSCALL_INFO_ENTRY:
            name = names.get(info.nr) if names else None
            if name is None or not (
                name in syscalls.FORKS or syscalls.is_recorded(name, info.args, self.io)
            ):
                self.pending.pop(tid, None)
                return
            args = [] if name in syscalls.FORKS else syscalls.describe_entry(tid, name, info.args)
            self.pending[tid] = _Pending(name, info.args, args)
        elif info.op == ptrace.SYSCALL_INFO_EXIT:
            entry = self.pending.pop(tid, None)
            if entry is None or entry.recorded or info.is_error or info.rval < 0:
                return
            if entry.name in syscalls.FORKS:
                return  # recorded at the fork event, or a thread
            extra = syscalls.describe_exit(tid, entry.name, entry.raw, info.rval)
            result_text = str(info.rval)
            if extra and "fds" in entry.args:  # pipe(fds) -> pipe([3, 4])
                entry.args[entry.args.index("fds")] = extra
            if entry.name in ("execve", "execveat") and tid == self.leader:
                self.execed = True
            if entry.name in ("execve", "execveat") and tid == self.leader:
                self.execed = True
            replaced: frozenset[tuple[int, int]] = frozenset()
            if entry.name in ("dup2", "dup3"):
                replaced = frozenset({(self.tgid_of[tid], syscalls.signed(entry.raw[1], 32))})
            self._record(tid, entry.name, tuple(entry.args), info.rval, result_text, replaced)

    def _event(self, tid: int, event: int) -> None:
        if event in (ptrace.EVENT_FORK, ptrace.EVENT_VFORK, ptrace.EVENT_CLONE):
            child = ptrace.event_message(tid)
            entry = self.pending.get(tid)
            name = entry.name if entry else {1: "fork", 2: "vfork", 3: "clone"}[event]
            flags = syscalls.clone_flags(tid, name, entry.raw if entry else ())
            thread = bool(flags & syscalls.CLONE_THREAD)
            self.tgid_of[child] = self.tgid_of[tid] if thread else child
            if child in self.held:
                self.held.discard(child)
                resume_child = True
            else:
                self.expect_stop.add(child)
                resume_child = False
            if not thread:
                self.comm[child] = self.comm.get(self.tgid_of[tid], "?")
                args = [] if name in ("fork", "vfork") else [_clone_flag_names(flags)]
                text = f"{child} (new process)"
                if flags & syscalls.CLONE_FILES:
                    text += ", sharing the parent's descriptor table"
                self._record(tid, name, tuple(args), child, text)
                if entry:
                    entry.recorded = True
            if resume_child:
                ptrace.resume(child)
        elif event == ptrace.EVENT_EXIT:
            tgid = self.tgid_of.get(tid, tid)
            if tid == tgid:
                status = ptrace.event_message(tid)
                self.exited_tgids.add(tgid)
                code = _shell_status(status)
                if tid == self.leader:
                    self.trace.exit_status = code
                self._record(tid, "exit", (str(code),), None, None)

    def _gone(self, tid: int, status: int) -> None:
        if tid == self.leader and self.trace.exit_status is None:
            self.trace.exit_status = _shell_status(status)
        self._forget(tid)

    def _forget(self, tid: int) -> None:
        tgid = self.tgid_of.pop(tid, None)
        self.pending.pop(tid, None)
        self.held.discard(tid)
        self.expect_stop.discard(tid)
        if tgid is not None and tgid not in self.tgid_of.values():
            self.exited_tgids.add(tgid)

    # -- recording -------------------------------------------------------

    def _record(self, tid: int, name: str, args: tuple[str, ...], result: int | None,
                result_text: str | None,
                replaced: frozenset[tuple[int, int]] = frozenset()) -> None:
        if len(self.trace.steps) >= self.max_steps:
            if not any(n.startswith("step limit") for n in self.trace.notes):
                self.trace.notes.append(
                    f"step limit {self.max_steps} reached: later syscalls not recorded"
                )
            return
        tgid = self.tgid_of.get(tid, tid)
        snap = self._snapshot()
        for t in snap.processes():
            self.comm[t.tgid] = t.comm
        self.trace.steps.append(Step(
            index=len(self.trace.steps),
            pid=tid,
            tgid=tgid,
            comm=self.comm.get(tgid, "?"),
            syscall=name,
            args=args,
            result=result,
            result_text=result_text,
            snapshot=snap,
            replaced=replaced,
            elapsed=time.monotonic() - self.started,
        ))

    def _snapshot(self) -> Snapshot:
        tgids = sorted(set(self.tgid_of.values()) - self.exited_tgids)
        for _ in range(3):
            alive = [p for p in tgids if os.path.exists(f"/proc/{p}")]
            try:
                return procfs.take_snapshot(alive, threads=False)
            except UsageError:
                continue  # one vanished between the check and the read
        return Snapshot(source=procfs.SOURCE, tasks=())

    def _kill_all(self) -> None:
        """SIGKILL every tracee and reap until none is left (bounded)."""
        victims = set(self.tgid_of) | self.held | {self.leader}
        for tid in victims:
            if tid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(tid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                tid, status = os.waitpid(-1, ptrace.WALL | os.WNOHANG)
            except ChildProcessError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                break
            if tid == 0:
                time.sleep(0.01)
                continue
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._gone(tid, status)
            elif os.WIFSTOPPED(status):
                # A killed tracee still stops at PTRACE_EVENT_EXIT: let it go on.
                ptrace.resume(tid, 0, ptrace.PTRACE_CONT)
        self.tgid_of.clear()
        self.held.clear()


def _tgid_of(tid: int) -> int:
    try:
        return int(parse_status(read_bytes(f"/proc/{tid}/status"))[b"Tgid"])
    except (Vanished, OSError, KeyError, ValueError):
        return tid


def _shell_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return status >> 8 & 0xFF


_CLONE_FLAG_NAMES = (
    (0x100, "CLONE_VM"), (0x200, "CLONE_FS"), (0x400, "CLONE_FILES"),
    (0x800, "CLONE_SIGHAND"), (0x4000, "CLONE_VFORK"), (0x8000, "CLONE_PARENT"),
    (0x10000, "CLONE_THREAD"), (0x40000, "CLONE_SYSVSEM"), (0x80000, "CLONE_SETTLS"),
    (0x100000, "CLONE_PARENT_SETTID"), (0x200000, "CLONE_CHILD_CLEARTID"),
    (0x1000000, "CLONE_CHILD_SETTID"), (0x20000000, "CLONE_NEWPID"),
)


def _clone_flag_names(flags: int) -> str:
    names = [n for bit, n in _CLONE_FLAG_NAMES if flags & bit]
    exit_signal = flags & 0xFF
    if exit_signal:
        try:
            names.append(signal.Signals(exit_signal).name)
        except ValueError:
            names.append(str(exit_signal))
    return "|".join(names) or "0"


def run_trace(argv: list[str], *, io: bool = False, timeout: float | None = None,
              max_steps: int = DEFAULT_MAX_STEPS, stdout_to_stderr: bool = False) -> Trace:
    """Trace ``argv`` to its end; see Tracer."""
    return Tracer(argv, io=io, timeout=timeout, max_steps=max_steps,
                  stdout_to_stderr=stdout_to_stderr).run()
