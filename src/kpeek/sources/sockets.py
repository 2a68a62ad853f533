"""What a socket inode is: family, type, addresses, state, unix peer.

Matched by inode number to the ``socket:[N]`` a descriptor names. The
network files of /proc (/proc/PID/net/tcp, unix, netlink, packet, raw...)
describe every socket of a network namespace; sock_diag (netlink, as
``ss -x`` uses it) adds what they lack: the inode of a
connected unix socket's peer. Both see one network namespace at a time: the
/proc files are read through a process in each namespace asked about, and
sock_diag is asked from a short-lived thread that joined that namespace
(setns of a network namespace is per thread), so peers are found in every
namespace that a holder of the sockets lives in.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Mapping

from kpeek.model import Socket
from kpeek.sources.background import Background
from kpeek.textsafe import decode

TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
_TCP_ESTABLISHED = 1
SOCK_TYPES = {1: "stream", 2: "dgram", 3: "raw", 4: "rdm", 5: "seqpacket", 6: "dccp", 10: "packet"}
IP_PROTOCOLS = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp", 255: "raw"}
NETLINK_PROTOCOLS = {
    0: "route", 2: "usersock", 3: "firewall", 4: "sock_diag", 5: "nflog", 6: "xfrm",
    7: "selinux", 8: "iscsi", 9: "audit", 10: "fib_lookup", 11: "connector", 12: "netfilter",
    13: "ip6_fw", 14: "dnrtmsg", 15: "kobject_uevent", 16: "generic", 18: "scsitransport",
    19: "ecryptfs", 20: "rdma", 21: "crypto", 22: "smc",
}  # fmt: skip
ETHERTYPES = {0x0003: "all", 0x0800: "ip", 0x0806: "arp", 0x86DD: "ipv6", 0x8100: "vlan"}
# /proc/net/<file>: (family, protocol, type or None for "from the file")
INET_FILES = {
    "tcp": ("inet", "tcp", "stream"),
    "tcp6": ("inet6", "tcp", "stream"),
    "udp": ("inet", "udp", "dgram"),
    "udp6": ("inet6", "udp", "dgram"),
    "udplite": ("inet", "udplite", "dgram"),
    "udplite6": ("inet6", "udplite", "dgram"),
    "raw": ("inet", "", "raw"),
    "raw6": ("inet6", "", "raw"),
    "icmp": ("inet", "icmp", "dgram"),
    "icmp6": ("inet6", "ipv6-icmp", "dgram"),
}


_TABLES = (*INET_FILES, "unix", "netlink", "packet")
_ahead: Background | None = None


def read_ahead() -> None:
    """Start reading kpeek's own network namespace's socket tables (its
    /proc/self/net files and sock_diag's unix peers) in a thread, for the
    next :func:`describe` (a whole-system kpeek files: it will have sockets):
    the kernel formats them on the other CPU while this process loads its
    BPF programs."""
    global _ahead
    _ahead = Background(_read_own_tables)


def _read_own_tables() -> tuple[dict[str, list[bytes]], dict[int, int]]:
    # Runs in read_ahead's thread: imports nothing (see sources.background).
    return {name: _table_lines(f"/proc/self/net/{name}") for name in _TABLES}, unix_peers(None)


def describe(inodes: Iterable[int], holders: Mapping[int, int] | None = None) -> dict[int, Socket]:
    """The sockets among ``inodes``, by inode number.

    ``holders`` maps a socket inode to a pid holding it: sockets not found in
    kpeek's own network namespace are looked up in that process's. Inodes
    that no table lists (a socket of a family not handled here) are left out.
    """
    global _ahead
    ahead, _ahead = _ahead, None  # read for this call alone
    wanted = set(inodes)
    found: dict[int, Socket] = {}
    if not wanted:
        return found
    own = _netns("self")
    found.update(_from_proc_net("/proc/self/net", wanted, own, None,
                                ahead.result() if ahead else None))
    missing = wanted - found.keys()
    if missing and holders:
        tried = {own}
        for inode in sorted(missing):
            pid = holders.get(inode)
            if pid is None or inode in found or (ns := _netns(str(pid))) in tried:
                continue
            tried.add(ns)
            found.update(_from_proc_net(f"/proc/{pid}/net", wanted - found.keys(), ns, pid))
    return found


def _netns(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _table_lines(path: str) -> list[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read().splitlines()[1:]
    except OSError:
        return []


def _from_proc_net(
    base: str, wanted: set[int], netns: int | None, pid: int | None,
    read: tuple[dict[str, list[bytes]], dict[int, int]] | None = None,
) -> dict[int, Socket]:
    """One network namespace's sockets among ``wanted`` (its tables under
    ``base``), with their unix peers from sock_diag asked in that namespace
    (through ``pid``'s; None for kpeek's own), or those ``read`` ahead (the
    tables' lines by name, the peers). Each Socket is made once, whole:
    two dataclasses.replace per socket made describe() 2.5x slower."""
    tables, peers_read = read if read is not None else (None, None)

    def _lines(name: str) -> list[bytes]:
        return tables[name] if tables is not None else _table_lines(f"{base}/{name}")

    found: dict[int, Socket] = {}
    for name, (family, protocol, kind) in INET_FILES.items():
        for line in _lines(name):
            s = _inet_line(line, family, protocol, kind, netns)
            if s is not None and s.inode in wanted:
                found[s.inode] = s
    # Num RefCount Protocol Flags Type St Inode [Path]: each line split once
    unix = [f for line in _lines("unix") if len(f := line.split(None, 7)) >= 7]
    unix = [(ino, f) for f in unix if (ino := int(f[6])) in wanted]
    if unix:
        peers = peers_read if peers_read is not None else unix_peers(pid)
        for ino, f in unix:
            found[ino] = _unix_socket(f, ino, peers.get(ino), netns)
    for line in _lines("netlink"):
        f = line.split()
        if len(f) >= 10 and int(f[9]) in wanted:
            proto = int(f[1])
            found[int(f[9])] = Socket(
                int(f[9]), "netlink", "raw", NETLINK_PROTOCOLS.get(proto, str(proto)),
                local=f"pid {int(f[2])}", netns=netns,
            )  # fmt: skip
    for line in _lines("packet"):
        f = line.split()
        if len(f) >= 9 and int(f[8]) in wanted:
            found[int(f[8])] = _packet(f, netns)
    return found


def _packet(f: list[bytes], netns: int | None) -> Socket:
    kind, proto, ifindex = int(f[2]), int(f[3], 16), int(f[4])
    try:
        iface = socket.if_indextoname(ifindex) if ifindex else "*"
    except OSError:
        iface = f"if{ifindex}"
    return Socket(
        int(f[8]),
        "packet",
        SOCK_TYPES.get(kind, str(kind)),
        ETHERTYPES.get(proto, f"0x{proto:04x}"),
        interface=iface,
        netns=netns,
    )


def _inet_line(
    line: bytes, family: str, protocol: str, kind: str, netns: int | None
) -> Socket | None:
    f = line.split()
    if len(f) < 10 or not f[0].endswith(b":"):
        return None
    local, lport = _address(f[1])
    remote, rport = _address(f[2])
    state = int(f[3], 16)
    if kind == "raw":
        protocol = IP_PROTOCOLS.get(lport, str(lport))  # a raw socket's "port" is its protocol
        shown_local, shown_remote = _host(local), "" if remote.is_unspecified else _host(remote)
    else:
        shown_local = f"{_host(local)}:{lport or '*'}"
        shown_remote = "" if remote.is_unspecified and not rport else f"{_host(remote)}:{rport}"
    if protocol == "tcp":
        shown_state = TCP_STATES.get(state, str(state))
    else:
        shown_state = "connected" if state == _TCP_ESTABLISHED else "unconnected"
    return Socket(
        int(f[9]), family, kind, protocol, shown_local, shown_remote, shown_state, netns=netns
    )


def _address(field: bytes) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """An address:port of /proc/net/tcp: the address in host-order 32-bit words."""
    addr, _, port = field.partition(b":")
    words = bytes.fromhex(addr.decode())
    packed = b"".join(
        struct.pack(">I", struct.unpack("=I", words[i : i + 4])[0]) for i in range(0, len(words), 4)
    )
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip, int(port, 16)


def _host(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip.is_unspecified:
        return "*"
    return f"[{ip}]" if ip.version == 6 else str(ip)


_UNIX_STATES = {1: "unconnected", 2: "connecting", 3: "connected", 4: "disconnecting"}
_UNIX_LISTENING = 0x10000


def _unix_socket(f: list[bytes], ino: int, peer: int | None, netns: int | None) -> Socket:
    """The socket of a /proc/net/unix line split in (up to) 8 fields."""
    kind, st, flags = int(f[4], 16), int(f[5], 16), int(f[3], 16)
    path = decode(f[7]) if len(f) > 7 else ""
    state = "LISTEN" if flags & _UNIX_LISTENING else _UNIX_STATES.get(st, str(st))
    # (inode, family, type, protocol, local, remote, state, path, peer, interface, netns)
    return Socket(ino, "unix", SOCK_TYPES.get(kind, str(kind)), "", "", "", state, path, peer, "",
                  netns)  # fmt: skip


# sock_diag (linux/sock_diag.h, linux/unix_diag.h): a stable netlink ABI, asked
# directly: a general netlink library costs more to import than the whole query.
NETLINK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
UDIAG_SHOW_VFS, UDIAG_SHOW_PEER = 0x2, 0x4
UNIX_DIAG_VFS, UNIX_DIAG_PEER = 1, 2
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ = struct.Struct("=BBHIII8x")  # family, protocol, pad, states, ino, show, cookie
_MSG = struct.Struct("=BBBxI8x")  # family, type, state, ino, cookie
_RTA = struct.Struct("=HH")


def unix_peers(pid: int | None = None) -> dict[int, int]:
    """Inode -> peer inode of every connected unix socket in kpeek's network
    namespace, or in ``pid``'s, from sock_diag (as ``ss -x`` asks it); empty
    where sock_diag cannot be used (another namespace needs CAP_SYS_ADMIN)."""
    found = _unix_attribute(pid, UDIAG_SHOW_PEER, UNIX_DIAG_PEER, 4)
    return {ino: struct.unpack_from("=I", raw)[0] for ino, raw in found.items()}


def unix_bound_files(pid: int | None = None) -> dict[int, tuple[int, int]]:
    """Inode -> (st_dev, st_ino & 0xFFFFFFFF) of the file each unix socket
    bound to a path is bound to (sock_diag's UNIX_DIAG_VFS: the file itself,
    however its name was written), in kpeek's network namespace or ``pid``'s."""
    found = _unix_attribute(pid, UDIAG_SHOW_VFS, UNIX_DIAG_VFS, 8)
    out = {}
    for ino, raw in found.items():
        vfs_ino, dev = struct.unpack_from("=II", raw)
        out[ino] = (os.makedev(dev >> 20, dev & 0xFFFFF), vfs_ino)  # the kernel's dev_t
    return out


def _unix_attribute(pid: int | None, show: int, want: int, size: int) -> dict[int, bytes]:
    """Inode -> the ``want`` attribute (its first ``size`` bytes) of every unix
    socket sock_diag lists with ``show``. One dump request, answered in as
    many reads as it takes; what was read before an error stands."""
    found: dict[int, bytes] = {}
    try:
        s = _diag_socket() if pid is None else _diag_socket_in(pid)
    except OSError:
        return found
    try:
        _dump_unix(s, show, want, size, found)
    except (OSError, struct.error):
        pass
    finally:
        s.close()
    return found


def _dump_unix(s: socket.socket, show: int, want: int, size: int,
               found: dict[int, bytes]) -> None:
    s.settimeout(5.0)  # the kernel answers at once; never wait for good
    body = _REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show)
    header = _NLMSG.pack(
        _NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
    )
    s.sendto(header + body, (0, 0))
    while True:
        data = s.recv(1 << 16)
        off = 0
        while off + _NLMSG.size <= len(data):
            length, kind, _, _, _ = _NLMSG.unpack_from(data, off)
            if kind in (NLMSG_DONE, NLMSG_ERROR) or length < _NLMSG.size:
                return
            msg = off + _NLMSG.size
            ino = _MSG.unpack_from(data, msg)[3]
            attr, end = msg + _MSG.size, off + length
            while attr + _RTA.size <= end:
                alen, atype = _RTA.unpack_from(data, attr)
                if alen < _RTA.size:
                    break
                if atype == want and alen >= _RTA.size + size:
                    found[ino] = data[attr + _RTA.size:attr + _RTA.size + size]
                attr += (alen + 3) & ~3
            off += (length + 3) & ~3


def _diag_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_DIAG)


def _diag_socket_in(pid: int) -> socket.socket:
    """A sock_diag socket of ``pid``'s network namespace (a socket belongs to
    the namespace of the thread that made it)."""
    from kpeek.sources.nsjoin import CLONE_NEWNET, run_in_namespace

    return run_in_namespace(pid, CLONE_NEWNET, _diag_socket)
