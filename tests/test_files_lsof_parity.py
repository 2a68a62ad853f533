"""kpeek files against lsof on real states: sockets, locks, endpoints,
anonymous inodes, cwd/rtd/txt/mem rows and lsof's selections.

One family builds everything (module-scoped); each test reads kpeek's JSON
and, where lsof shows the fact, lsof's own answer for the same process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from capabilities import require
from kpeek.cli import main
from scenarios import Family, family

# A parent and a child sharing: a TCP loopback connection (client in the
# child), a unix socketpair (one end each), a pipe (parent writes, child
# reads), a pty pair (master in the parent, slave in the child), an
# eventfd; the parent also holds a connected UDP socket, locks of each kind,
# an epoll fd watching the pipe and a socket, a pidfd of the child, a
# timerfd, an inotify fd, a signalfd, a mapped file with no descriptor, and
# a deleted file. A second child waits on the parent's POSIX write lock.
EVERYTHING = """
import ctypes, fcntl, mmap, pty, select, struct, tempfile
tmp = tempfile.mkdtemp(prefix="kpeek-parity-")
os.chdir(tmp)
listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen()
port = listener.getsockname()[1]
ua, ub = socket.socketpair()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.connect(("127.0.0.1", 9))
r, w = os.pipe()
master, slave = pty.openpty()
ev = os.eventfd(5)

def lockfile(name, how, *args):
    f = open(os.path.join(tmp, name), "w+"); f.write("x" * 100); f.flush()
    how(f, *args)
    return f
posix_part = lockfile("posix-part", fcntl.lockf, fcntl.LOCK_EX, 10, 5)
posix_whole = lockfile("posix-whole", fcntl.lockf, fcntl.LOCK_SH)
flock_ex = lockfile("flock-ex", fcntl.flock, fcntl.LOCK_EX)
flock_sh = lockfile("flock-sh", fcntl.flock, fcntl.LOCK_SH)
F_OFD_SETLK = 37
ofd = lockfile("ofd-part", lambda f: None)
fcntl.fcntl(ofd, F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 20, 10, 0))

mapped_path = os.path.join(tmp, "mapped")
with open(mapped_path, "wb") as f:
    f.write(b"m" * 8192)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
with open(mapped_path, "rb") as f:  # mapped, then its descriptor closed (Python's mmap keeps a dup)
    assert libc.mmap(None, 8192, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0) not in (None, -1)
gone_path = os.path.join(tmp, "gone")
gone = os.open(gone_path, os.O_RDWR | os.O_CREAT, 0o600)
os.unlink(gone_path)

sync_r, sync_w = os.pipe()
child = os.fork()
if child == 0:
    os.close(w); os.close(ua.fileno()); os.close(master); os.close(sync_r)
    client = socket.create_connection(("127.0.0.1", port))
    os.write(sync_w, str(client.fileno()).encode() + b" " + str(client.getsockname()[1]).encode())
    os.close(sync_w)
    hold()
os.close(sync_w)
client_fd, client_port = map(int, os.read(sync_r, 100).split())
os.close(sync_r)
accepted, _ = listener.accept()
os.close(r)  # the parent only writes

waiter = os.fork()
if waiter == 0:
    f = open(os.path.join(tmp, "posix-part"), "r+")
    fcntl.lockf(f, fcntl.LOCK_EX, 10, 5)  # blocks: the parent holds it
    hold()

pr, pw = os.pipe()
ep = select.epoll()
ep.register(pr, select.EPOLLIN)
ep.register(accepted.fileno(), select.EPOLLIN | select.EPOLLOUT)
pidfd = os.pidfd_open(child)
tfd = libc.timerfd_create(1, 0)
class timespec(ctypes.Structure): _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
class itimerspec(ctypes.Structure): _fields_ = [("interval", timespec), ("value", timespec)]
libc.timerfd_settime(tfd, 0, ctypes.byref(itimerspec(timespec(0, 0), timespec(3600, 0))), None)
ino = libc.inotify_init()
libc.inotify_add_watch(ino, tmp.encode(), 0x100)
mask = (ctypes.c_ulong * 16)()
mask[0] = 1 << (signal.SIGUSR1 - 1)
sfd = libc.signalfd(-1, mask, 0)
def waiting():
    return any("->" in line and f" {waiter} " in line for line in open("/proc/locks"))
while not waiting():  # until the waiter blocks on the lock
    time.sleep(0.02)
report(parent=os.getpid(), child=child, waiter=waiter, tmp=tmp, port=port,
       client_fd=client_fd, client_port=client_port, accepted=accepted.fileno(),
       listener=listener.fileno(), udp=udp.fileno(), udp_port=udp.getsockname()[1],
       ua=ua.fileno(), ub=ub.fileno(), w=w, master=master, slave=slave,
       pts=os.ttyname(slave), ev=ev, ep=ep.fileno(), pr=pr, pidfd=pidfd, tfd=tfd,
       ino=ino, sfd=sfd, gone=gone, mapped=mapped_path,
       posix_part=posix_part.fileno(), posix_whole=posix_whole.fileno(),
       flock_ex=flock_ex.fileno(), flock_sh=flock_sh.fileno(), ofd=ofd.fileno())
"""


@pytest.fixture(scope="module")
def scene() -> Iterator[Family]:
    require("root")
    with family(EVERYTHING, timeout=60) as fam:
        try:
            yield fam
        finally:
            shutil.rmtree(fam.info["tmp"], ignore_errors=True)


def kpeek_json(capsys, *argv: str) -> dict:
    assert main(["files", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def fds_of(doc: dict, pid: int) -> dict[int, dict]:
    (proc,) = [p for p in doc["processes"] if p["pid"] == pid]
    return {d["fd"]: d for d in proc["fds"]}


def lsof_fields(*args: str) -> dict[tuple[int, str], dict[str, str]]:
    """lsof -F output as {(pid, fd): {field letter: value}}."""
    out = subprocess.run(
        ["lsof", "-n", "-P", "-w", "-F", "pflnTt", *args], capture_output=True, text=True
    ).stdout
    rows: dict[tuple[int, str], dict[str, str]] = {}
    pid = 0
    current: dict[str, str] = {}
    for line in out.splitlines():
        tag, value = line[:1], line[1:]
        if tag == "p":
            pid = int(value)
        elif tag == "f":
            key = (pid, value)
            while key in rows:  # mem rows repeat the same "fd"
                key = (pid, key[1] + "+")
            current = rows.setdefault(key, {})
        elif tag == "T":
            current.setdefault("T", "")
            current["T"] += value + ";"
        else:
            current[tag] = value
    return rows


@pytest.mark.parametrize("source", ["procfs", "bpf"])
def test_sockets_as_lsof_shows_them(capsys, scene, source):
    if source == "bpf":
        require("bpf")
    info = scene.info
    parent, child = info["parent"], info["child"]
    doc = kpeek_json(capsys, "--source", source, str(parent), str(child))
    mine, theirs = fds_of(doc, parent), fds_of(doc, child)
    lsof = lsof_fields("-a", "-p", f"{parent},{child}", "-i")

    port, cport = info["port"], info["client_port"]
    assert mine[info["listener"]]["socket"]["state"] == "LISTEN"
    accepted = mine[info["accepted"]]["socket"]
    assert (accepted["local"], accepted["remote"]) == (
        f"127.0.0.1:{port}",
        f"127.0.0.1:{cport}",
    )
    assert accepted["state"] == "ESTABLISHED" and accepted["protocol"] == "tcp"
    client = theirs[info["client_fd"]]["socket"]
    assert client["local"] == f"127.0.0.1:{cport}" and client["remote"] == f"127.0.0.1:{port}"
    udp = mine[info["udp"]]["socket"]
    assert udp["protocol"] == "udp" and udp["state"] == "connected"
    assert udp["remote"] == "127.0.0.1:9"

    # Every internet socket lsof lists, kpeek names the same way.
    assert lsof, "lsof listed no internet sockets"
    for (pid, fd), fields in lsof.items():
        if not fd.isdigit():
            continue
        s = fds_of(doc, pid)[int(fd)]["socket"]
        assert fields["n"] == s["local"].replace("*", "*") + (
            f"->{s['remote']}" if s["remote"] else ""
        )
        if s["protocol"] == "tcp":
            assert f"ST={s['state']};" in fields["T"]

    # The unix pair: each end names the other process's descriptor.
    ua = mine[info["ua"]]
    assert ua["socket"]["family"] == "unix" and ua["socket"]["state"] == "connected"
    ends = {(e["pid"], e["fd"]) for e in ua.get("endpoints", [])}
    assert (child, info["ub"]) in ends
    ub_inode = int(theirs[info["ub"]]["path"].strip("socket:[]"))
    assert ua["socket"]["peer_inode"] == ub_inode
    unix = subprocess.run(
        ["lsof", "-n", "-w", "-U", "+E", "-a", "-p", str(parent)], capture_output=True, text=True
    ).stdout
    assert f"->INO={ub_inode}" in unix

    # -i selections: by port, by protocol; -t gives the pids only.
    assert main(["files", "-t", "--source", source, "-i", f"tcp:{port}"]) == 0
    pids = {int(p) for p in capsys.readouterr().out.split()}
    assert {parent, child} <= pids
    spec = f"udp@127.0.0.1:{info['udp_port']}"
    assert main(["files", "-t", "--source", source, "-i", spec]) == 0
    ours = {int(p) for p in capsys.readouterr().out.split()}
    assert ours == {parent, child, info["waiter"]}  # forked after the socket was made
    lsof_t = subprocess.run(["lsof", "-t", "-i", spec], capture_output=True, text=True).stdout
    assert {int(p) for p in lsof_t.split()} == ours


def test_locks_as_lsof_shows_them(capsys, scene):
    info = scene.info
    parent = info["parent"]
    mine = fds_of(kpeek_json(capsys, str(parent)), parent)
    lsof = lsof_fields("-p", str(parent))

    def letters(fd: int) -> str:
        return "".join(lock["letter"] for lock in mine[fd].get("locks", []))

    expected = {
        "posix_part": ("w", "POSIX", 5, 14),
        "posix_whole": ("R", "POSIX", 0, None),
        "flock_ex": ("W", "FLOCK", 0, None),
        "flock_sh": ("R", "FLOCK", 0, None),
        "ofd": ("w", "OFDLCK", 20, 29),
    }
    for name, (letter, kind, start, end) in expected.items():
        fd = info[name]
        (lock,) = mine[fd]["locks"]
        assert (lock["letter"], lock["kind"], lock["start"], lock["end"]) == (
            letter,
            kind,
            start,
            end,
        ), name
        if kind != "OFDLCK":  # lsof matches locks by pid; an OFD lock has none (-1)
            assert lsof[(parent, str(fd))]["l"] == letter, name
    # The waiter is told with the lock it waits for.
    (part,) = mine[info["posix_part"]]["locks"]
    assert part["waiters"] == [info["waiter"]]
    assert not mine[info["w"]].get("locks")

    assert main(["files", str(parent)]) == 0
    text = "".join(capsys.readouterr().out.split())
    assert f"w[5-14]<-{info['waiter']}" in text and "W(flock)" in text


def test_endpoints_as_lsof_plus_e(capsys, scene):
    info = scene.info
    parent, child = info["parent"], info["child"]
    # Only the parent is shown; +E finds the other ends in every process.
    doc = kpeek_json(capsys, "+E", str(parent))
    mine = fds_of(doc, parent)

    def ends(fd: int) -> set[tuple[int, int, str]]:
        return {(e["pid"], e["fd"], e["mode"]) for e in mine[fd].get("endpoints", [])}

    assert (child, 0 if False else _child_fd_of_pipe(child, mine[info["w"]]["path"]), "r") in ends(
        info["w"]
    )
    pts = info["pts"]
    assert mine[info["master"]]["details"] == {
        "kind": "ptmx",
        "tty_index": int(pts.rsplit("/", 1)[1]),
        "pts": pts,
    }
    assert (child, info["slave"], "u") in ends(info["master"])
    assert (child, info["ev"], "u") in ends(info["ev"])

    lsof = subprocess.run(
        ["lsof", "-n", "-w", "+E", "-a", "-p", str(parent), "-d", f"{info['w']},{info['master']}"],
        capture_output=True,
        text=True,
    ).stdout
    assert f"{child},python3,{_child_fd_of_pipe(child, mine[info['w']]['path'])}r" in lsof
    assert f"->{pts}" in lsof and f"{child},python3,{info['slave']}u" in lsof

    assert main(["files", "+E", str(parent)]) == 0
    text = "".join(capsys.readouterr().out.split())
    assert f"->{pts}" in text and f"{child},python3,{info['slave']}u" in text


def _child_fd_of_pipe(child: int, path: str) -> int:
    for fd in os.listdir(f"/proc/{child}/fd"):
        if os.readlink(f"/proc/{child}/fd/{fd}") == path:
            return int(fd)
    raise AssertionError(f"child holds no {path}")


def test_anonymous_inodes_explained(capsys, scene):
    info = scene.info
    parent, child = info["parent"], info["child"]
    mine = fds_of(kpeek_json(capsys, str(parent)), parent)

    epoll = mine[info["ep"]]["details"]
    assert epoll["kind"] == "epoll"
    assert {w["fd"] for w in epoll["watches"]} == {info["pr"], info["accepted"]}
    watched = {w["fd"]: w["inode"] for w in epoll["watches"]}
    assert watched[info["pr"]] == mine[info["pr"]]["inode"]
    assert mine[info["pidfd"]]["details"]["pid"] == child
    timer = mine[info["tfd"]]["details"]
    assert timer["clock"] == "monotonic" and 3000 < timer["next_expiry_s"] <= 3600
    watch = mine[info["ino"]]["details"]["watches"]
    st = os.stat(info["tmp"])
    assert [w["inode"] for w in watch] == [
        f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{st.st_ino}"
    ]
    assert mine[info["sfd"]]["details"]["signals"] == ["SIGUSR1"]
    assert mine[info["ev"]]["details"]["count"] == 5

    # lsof names epoll, pidfd and eventfd the same way.
    lsof = lsof_fields("-p", str(parent))
    assert lsof[(parent, str(info["ep"]))]["n"] == f"[eventpoll:{info['pr']},{info['accepted']}]"
    assert lsof[(parent, str(info["pidfd"]))]["n"] == f"[pidfd:{child}]"
    assert main(["files", str(parent)]) == 0
    text = capsys.readouterr().out
    squeezed = "".join(text.split())  # long cells may fold across lines
    for expected in (f"[eventpoll:{info['pr']},{info['accepted']}]", f"[pidfd:{child}]"):
        assert expected in squeezed
    assert "[timerfd]clock=monotonicnext=" in squeezed and "mask=SIGUSR1" in squeezed


def test_cwd_root_txt_and_mem_rows(capsys, scene):
    info = scene.info
    parent = info["parent"]
    doc = kpeek_json(capsys, str(parent))
    (proc,) = doc["processes"]
    rows = {(r["kind"], r["path"]) for r in proc["process_files"]}
    assert ("cwd", info["tmp"]) in rows and ("rtd", "/") in rows
    assert ("txt", os.readlink(f"/proc/{parent}/exe")) in rows
    assert ("mem", info["mapped"]) in rows  # mapped, its descriptor closed
    assert info["mapped"] not in {d["path"] for d in proc["fds"]}
    lsof = lsof_fields("-p", str(parent))
    for kind in ("cwd", "rtd", "txt"):
        assert (kind, lsof[(parent, kind)]["n"]) in rows
    lsof_mem = {v["n"] for (p, fd), v in lsof.items() if fd.rstrip("+") == "mem"}
    assert info["mapped"] in lsof_mem
    assert lsof_mem <= {path for kind, path in rows if kind in ("mem", "txt")}


def test_path_dir_and_deleted_selections(capsys, scene):
    info = scene.info
    parent = info["parent"]
    tmp = info["tmp"]
    # Who has this file open (a lock file): only the parent.
    assert main(["files", "-t", f"{tmp}/flock-ex"]) == 0
    ours = {int(p) for p in capsys.readouterr().out.split()}
    assert ours == {parent, info["child"], info["waiter"]}  # both forked after the open
    lsof = subprocess.run(["lsof", "-t", "-w", f"{tmp}/flock-ex"], capture_output=True, text=True)
    assert {int(p) for p in lsof.stdout.split()} == ours
    # The mapped file: held only as a mem row.
    doc = kpeek_json(capsys, info["mapped"])
    (proc,) = [p for p in doc["processes"] if p["pid"] == parent]
    assert proc["fds"] == [] and [r["kind"] for r in proc["process_files"]] == ["mem"]
    # A deleted file, by its old name.
    doc = kpeek_json(capsys, f"{tmp}/gone")
    holders = {p["pid"]: [d["fd"] for d in p["fds"]] for p in doc["processes"]}
    assert holders == {pid: [info["gone"]] for pid in (parent, info["child"], info["waiter"])}
    # +D: everything under the directory, deleted files and cwd included.
    doc = kpeek_json(capsys, "+D", tmp, str(parent))
    (proc,) = doc["processes"]
    fds = {d["fd"] for d in proc["fds"]}
    assert {info["gone"], info["posix_part"], info["ofd"]} <= fds
    assert {r["kind"] for r in proc["process_files"]} == {"cwd", "mem"}
    # A mount point: every file on that file system (the pty's devpts).
    mount = os.path.dirname(info["pts"])
    lsof = subprocess.run(["lsof", "-t", "-w", mount], capture_output=True, text=True).stdout
    assert main(["files", "-t", mount]) == 0
    ours = {int(p) for p in capsys.readouterr().out.split()}
    assert {parent, info["child"]} <= ours
    assert {int(p) for p in lsof.split()} <= ours | _gone(lsof)
    # -c: command prefix.
    assert main(["files", "-t", "-c", "python", "-c", "nosuchcommand", str(parent)]) == 0
    assert capsys.readouterr().out.split() == [str(parent)]


def _gone(pids_text: str) -> set[int]:
    return {int(p) for p in pids_text.split() if not os.path.exists(f"/proc/{p}")}


def test_missing_pid_does_not_abort_the_others(capsys, scene):
    parent = scene.info["parent"]
    missing = _free_pid()
    assert main(["files", "--json", str(missing), str(parent)]) == 1
    captured = capsys.readouterr()
    assert f"no such process: {missing}" in captured.err
    assert [p["pid"] for p in json.loads(captured.out)["processes"]] == [parent]
    assert main(["files", "-t", "-p", f"{missing}"]) == 1
    assert capsys.readouterr().out == ""


def _free_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_as_nobody_other_users_pids_are_reported_not_fatal(scene, tmp_path):
    require("root")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    parent = scene.info["parent"]
    script = "import sys; from kpeek.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    own = subprocess.Popen(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "60"]
    )
    try:
        proc = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
             _python(), "-c", script, "files", "--source", "procfs", "--json",
             str(parent), str(own.pid)],
            capture_output=True, text=True, env=env, timeout=60, cwd=tempfile.gettempdir(),
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert f"cannot read the descriptors of pid {parent}" in proc.stderr
        assert "Traceback" not in proc.stderr
        doc = json.loads(proc.stdout)
        assert [p["pid"] for p in doc["processes"]] == [own.pid]
        # -u selects the user's processes.
        proc = subprocess.run(
            [_python(), "-c", script, "files", "-t", "-u", "nobody", "-c", "sleep"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert str(own.pid) in proc.stdout.split()
    finally:
        own.kill()
        own.wait()


def _python() -> str:
    import sys

    return sys.executable


def test_diagram_labels_carry_the_facts(scene, tmp_path):
    require("graphviz")
    info = scene.info
    out = tmp_path / "d.dot"
    assert main(["files", "--dot", str(out), str(info["parent"])]) == 0
    text = out.read_text()
    assert f"TCP 127.0.0.1:{info['port']}" in text  # the accepted connection's inode
    assert "lock W(flock)" in text and "lock w[5-14]" in text
    assert f"[pidfd:{info['child']}]" in text and "[eventpoll:" in text


# Raw, packet and netlink sockets: protocol, interface, netlink family.
RAW_SOCKETS = """
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
pkt.bind(("lo", 0))
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
nl.bind((0, 0))
report(pid=os.getpid(), raw=raw.fileno(), pkt=pkt.fileno(), nl=nl.fileno(),
       nl_port=nl.getsockname()[0])
"""


def test_raw_packet_and_netlink_sockets(capsys):
    require("root")
    with family(RAW_SOCKETS) as fam:
        info = fam.info
        fds = fds_of(kpeek_json(capsys, str(info["pid"])), info["pid"])
        raw, pkt, nl = (fds[info[k]]["socket"] for k in ("raw", "pkt", "nl"))
        assert (raw["family"], raw["type"], raw["protocol"]) == ("inet", "raw", "icmp")
        assert (pkt["family"], pkt["protocol"], pkt["interface"]) == ("packet", "all", "lo")
        assert (nl["family"], nl["protocol"]) == ("netlink", "route")
        assert nl["local"] == f"pid {info['nl_port']}"
        lsof = lsof_fields("-p", str(info["pid"]))
        # lsof prints a raw socket as /proc/net/raw has it: the "port" is the protocol.
        local = lsof[(info["pid"], str(info["raw"]))]["n"].split("->")[0]
        assert int(local.rsplit(":", 1)[1], 16) == socket.IPPROTO_ICMP


def test_socket_tables_read_ahead_describe_the_same(scene):
    """kpeek files reads its namespace's socket tables in a thread while it
    takes the snapshot (sockets.read_ahead): the same sockets, described
    the same, as reading them when asked; used by one describe() alone."""
    from kpeek.sources import sockets

    info = scene.info
    inodes = set()
    for pid in (info["parent"], info["child"]):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    assert len(inodes) >= 6
    sockets.read_ahead()
    ahead = sockets.describe(inodes)
    assert sockets._ahead is None
    assert ahead == sockets.describe(inodes)
    kinds = {(s.family, s.protocol) for s in ahead.values()}
    assert {("unix", ""), ("inet", "tcp"), ("inet", "udp")} <= kinds, kinds
    assert any(s.peer for s in ahead.values())
