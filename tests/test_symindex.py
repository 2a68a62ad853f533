"""This boot's index of the kernel image's symbols (kpeek.kernel.symindex),
held against /proc/kallsyms itself: every name it answers, it answers as
the table does; anything it cannot answer, and any index that is not this
boot's or not the user's own, goes to /proc/kallsyms as before."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from capabilities import require
from kpeek.kernel import symindex
from kpeek.kernel.symbols import Kallsyms


@pytest.fixture(scope="module")
def text() -> str:
    require("root")
    with open("/proc/kallsyms") as f:
        return f.read()


@pytest.fixture(scope="module")
def bpf_name() -> str:
    """The name in /proc/kallsyms of a BPF program this process holds loaded
    while the tests run (other kpeek processes may load more of it)."""
    require("root", "bpf")
    from kpeek.sources.bpf.libbpf import BpfObject
    from kpeek.sources.bpf.loaded import shipped_object

    obj = BpfObject(shipped_object("reader"), "reader")
    with open("/proc/kallsyms") as f:
        names = [line.split()[2] for line in f
                 if line.endswith("[bpf]\n") and line.split()[2].endswith("_read_memory")]
    assert names
    yield names[0]
    obj.close()


def _addresses_of(name: str) -> set[int]:
    with open("/proc/kallsyms") as f:
        return {int(line.split()[0], 16) for line in f if line.split()[2] == name}


def _kpeek(cache: str | None, *args: str, home: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "HOME")}
    if cache is not None:
        env["XDG_CACHE_HOME"] = cache
    if home is not None:
        env["HOME"] = home
    return subprocess.run([sys.executable, "-m", "kpeek", "sym", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_every_indexed_name_is_answered_as_the_table_answers_it(text, tmp_path) -> None:
    """All of them: the address, size and type letter the whole table gives
    (a global before a static of the same name), for each name of the image's."""
    assert symindex.save(text, str(tmp_path))
    index = symindex.SymbolIndex.open(str(tmp_path))
    assert index is not None
    table = Kallsyms.from_text(text)
    image = text[: text.rfind("\n", 0, text.find("[")) + 1] if "[" in text else text
    rows = [line.split() for line in image.splitlines()]
    last = max(int(a, 16) for a, _, _ in rows)
    modular = {line.split()[2] for line in text[len(image):].splitlines()}
    checked = 0
    for name in {name for _, _, name in rows}:
        found = index.find(name)
        sym = table.symbol(name)
        if name in modular:  # a module's symbol of that name may win in the table
            continue
        if sym.address == last:
            assert found is None, name  # its size needs the whole table
            continue
        assert found == (sym.address, sym.kind, sym.size), name
        checked += 1
    assert checked > 0.99 * len({name for _, _, name in rows})
    for name in ("kpeek_no_such_symbol", "", "a b", "schedule\n", "sch\u00e9dule", *modular):
        assert index.find(name) is None
    index.close()


def test_kallsyms_answers_from_the_index_without_reading_the_table(text, tmp_path, bpf_name,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = Kallsyms.load_indexed()  # no index yet: reads the table, makes one
    assert first.symbol("schedule") is not None and "_deferred" not in first.__dict__
    key = symindex.boot_key(text[:4096].encode())
    assert os.listdir(tmp_path / "kpeek") == [f"kallsyms-{key}.idx"]
    second = Kallsyms.load_indexed()
    names = random.Random(5).sample([line.split()[2] for line in text.splitlines()[:-1]
                                     if "[" not in line], 300)
    plain = Kallsyms.lazy_from_text(text)
    for name in ["schedule", "_text", *names]:
        assert second.symbol(name) == plain.symbol(name), name
        assert second.address_of(name) == plain.address_of(name), name
    assert "_deferred" in second.__dict__  # all answered from the index
    # a BPF program's or a missing name: the table, read now
    assert second.symbol("kpeek_no_such_symbol") is None
    assert "_deferred" not in second.__dict__
    sym = second.symbol(bpf_name)
    assert sym.module == "bpf" and sym.address in _addresses_of(bpf_name)
    # and by address, through the table
    sym = plain.symbol("schedule")
    assert second.lookup(sym.address + 1) == sym


def test_the_cli_gives_the_same_lines_with_and_without_an_index(text, tmp_path,
                                                                bpf_name) -> None:
    queries = ["schedule", "_text", "do_sys_openat2", "__x64_sys_pause"]
    nowhere = str(tmp_path / "a-file")
    open(nowhere, "w").close()  # no folder can be made under a file: no index
    without = _kpeek(f"{nowhere}/cache", *queries)
    assert without.returncode == 0, without.stderr
    made = _kpeek(str(tmp_path), *queries)  # makes the index
    used = _kpeek(str(tmp_path), *queries)
    assert without.stdout == made.stdout == used.stdout and not used.stderr
    (entry,) = os.listdir(tmp_path / "kpeek")
    st = os.stat(tmp_path / "kpeek" / entry)
    assert st.st_mode & 0o777 == 0o600 and os.stat(tmp_path / "kpeek").st_mode & 0o777 == 0o700
    assert _kpeek(str(tmp_path), "--json", "schedule").stdout == _kpeek(
        f"{nowhere}/cache", "--json", "schedule").stdout
    bpf = _kpeek(str(tmp_path), bpf_name)  # never in the index: the table's answer
    assert bpf.returncode == 0 and bpf.stdout.endswith(" [bpf]\n") and bpf_name in bpf.stdout
    missing = _kpeek(str(tmp_path), "kpeek_no_such_symbol")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    # no home at all: no index, no error
    homeless = _kpeek(None, "schedule", home="")
    assert homeless.returncode == 0 and not homeless.stderr
    assert homeless.stdout == used.stdout.splitlines(keepends=True)[0]


def _forged(tmp_path, text: str) -> str:
    """This boot's index with schedule at a wrong address: a use shows."""
    assert symindex.save(text, str(tmp_path / "kpeek"))
    (entry,) = os.listdir(tmp_path / "kpeek")
    path = str(tmp_path / "kpeek" / entry)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(b"schedule "))
    name, _, kind, size = lines[at].split(b" ")
    lines[at] = b" ".join((name, b"ffffffff80001230", kind, size))
    with open(path, "wb") as f:
        f.write(b"\n".join(lines))
    return path


def test_an_index_not_the_users_own_or_not_this_boots_is_not_used(text, tmp_path,
                                                                   monkeypatch) -> None:
    path = _forged(tmp_path, text)
    folder = str(tmp_path / "kpeek")

    def answer() -> int | None:
        index = symindex.SymbolIndex.open(folder)
        return None if index is None else index.find("schedule")[0]

    assert answer() == 0xFFFFFFFF80001230  # ours, private, this boot's: used as it is
    os.chown(path, 1000, 1000)
    assert answer() is None
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)  # it holds kernel addresses: private or nothing
    assert answer() is None
    os.chmod(path, 0o600)
    os.chmod(tmp_path / "kpeek", 0o777)
    assert answer() is None
    os.chmod(tmp_path / "kpeek", 0o700)
    assert answer() is not None
    # another boot, or a reader to whom the kernel shows other addresses
    monkeypatch.setattr(symindex, "_read_head", lambda: text[:4096].replace("f", "0").encode())
    assert answer() is None
    monkeypatch.undo()
    # cut short
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    assert answer() is None
    # a new index replaces it, and any other boot's
    other = tmp_path / "kpeek" / "kallsyms-0123456789abcdef0123456789abcdef.idx"
    other.write_bytes(b"kpeek-symindex 1 0123456789abcdef0123456789abcdef\nend 0\n")
    os.utime(other, (1, 1))  # made before this boot
    assert symindex.save(text, folder)
    assert os.listdir(tmp_path / "kpeek") == [os.path.basename(path)]
    assert answer() == Kallsyms.lazy_from_text(text).symbol("schedule").address


def test_text_of_another_shape_makes_no_index() -> None:
    assert symindex.build("ffffffff81000000 T _text\nffffffff81000010 T a b\n") is None
    assert symindex.build("ffffffff81000000 T _text\nffffffff81000010 T caf\u00e9\n") is None
    assert symindex.build("ffffffff81000010 T b\nffffffff81000000 T a\n") is None  # unsorted
    built = symindex.build(
        "ffffffff81000000 t dup\nffffffff81000000 T _text\nffffffff81000020 t dup\n"
        "ffffffff81000030 T dup\nffffffff81000040 T last\nffffffffa0000000 t m\t[mod]\n")
    # the first global dup, sizes up to the next address; the image's last left out
    assert built == (b"_text ffffffff81000000 T 20\ndup ffffffff81000030 T 10\nend 2\n")
