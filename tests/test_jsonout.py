"""jsonout's fast encoder writes the bytes the standard library wrote before."""

from __future__ import annotations

import json
import os
import random
import struct

import pytest

from capabilities import require
from kpeek import jsonout
from kpeek.render.tables import files_document, snapshot_meta, task_dict
from kpeek.sources import take_snapshot
from scenarios import family


def _stdlib(obj) -> bytes:
    return json.dumps(obj, default=jsonout._default, ensure_ascii=True,
                      separators=(",", ":")).encode()


# Children with odd names holding files whose names are invalid UTF-8,
# non-ASCII, astral and control characters.
ODD_FILES = """
import ctypes, tempfile
d = tempfile.mkdtemp(prefix="kpeek-json-").encode()
names = [b"bad\\xff\\xfe", "caf\\u00e9 \\U0001F600".encode(), b"tab\\tnl\\ndel\\x7f", b"q\\"b\\\\"]
children = []
for n in names:
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(15, n[:15], 0, 0, 0)
        keep = [os.open(os.path.join(d, n), os.O_RDWR | os.O_CREAT, 0o600), *os.pipe()]
        hold()
    children.append(pid)
time.sleep(0.3)
report(children=children)
"""


@pytest.mark.parametrize("source", ["procfs", "bpf"])
def test_real_documents_are_byte_identical(source):
    require("root")
    if source == "bpf":
        require("bpf")
    with family(ODD_FILES) as fam:
        snap = take_snapshot(source, pids=[fam.pid, *fam.info["children"]], threads=False)
        procs = sorted(snap.processes(), key=lambda t: t.pid)
        for doc in (files_document(snap, procs),
                    {**snapshot_meta(snap), "tasks": [task_dict(t) for t in snap.tasks]}):
            fast = jsonout.encode(doc)
            assert fast == _stdlib(doc)
            assert fast.isascii() and json.loads(fast) == json.loads(_stdlib(doc))
        paths = {f.path for f in snap.open_files.values()}
        assert any("\udcff" in p for p in paths) and any("\U0001F600" in p for p in paths)


def test_edge_values_match_the_standard_library():
    rng = random.Random(13)
    floats = [1e-05, 1e-7, 1e16, 1e22, 0.1, -0.0, 5e-324, 1764668123.123456]
    floats += [x for x in (struct.unpack("d", rng.randbytes(8))[0] for _ in range(3000))
               if x == x and abs(x) != float("inf")]
    floats += [rng.random() * 10 ** rng.randint(-30, 30) for _ in range(3000)]
    docs = [
        {"f": floats},
        {"s": "\x7f\x01\u00e9\U0001F600\u2028 \"\\ \b\f\n\r\t", 3: 1, None: 2, "n": None},
        {"p": "bad\udc80x\u00e9", "l": [1, "\udcff", {"x": "\U0001F600\udc81"}]},
        {"\udc80key": 1},
        {"big": 2**70, "neg": -(2**63) - 1, "set": {3, 1, 2}, "bytes": b"\x01\xff"},
        {"path": "/tmp/a:1e-5,0.00001"},
    ]
    for doc in docs:
        assert jsonout.encode(doc) == _stdlib(doc)
    # Hex in names (UUIDs) is not a float: such documents keep the fast path.
    assert not jsonout._odd_floats(_stdlib({"p": "/tmp/bd81680e-5775-48cc", "n": [0.5]}))


def test_dumps_carries_the_schema():
    doc = json.loads(jsonout.dumps("files", {"pid": os.getpid()}))
    assert doc == {"schema": f"kpeek.files/{jsonout.SCHEMA_VERSION}", "pid": os.getpid()}
