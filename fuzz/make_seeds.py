#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/<target>/ from the project's own test inputs:
pipeline YAML from examples/ and the tests, layer tars like the ones the image tests build
(every entry type, whiteouts, xattrs, and the hostile forms the unpacker must refuse), and the
protocol bodies and Content-Range headers the coordinator tests send. Run it again after
adding test inputs; the output is deterministic."""

import hashlib
import io
import json
import re
import struct
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def put(target, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def rust_strings(text):
    """String literals of Rust source: r#"..."# raw ones and plain "..." with escapes."""
    for m in re.finditer(r'r#"(.*?)"#', text, re.S):
        yield m.group(1)
    for m in re.finditer(r'"((?:[^"\\\n]|\\.)*)"', text):
        s = m.group(1)
        try:
            yield s.encode().decode("unicode_escape")
        except UnicodeDecodeError:
            pass


def pipelines():
    docs = [p.read_text() for p in sorted((ROOT / "examples").glob("*.yml"))]
    for src in sorted(
        list((ROOT / "pipelines" / "tests").glob("*.rs")) + list((ROOT / "tests").glob("*.rs"))
    ):
        for s in rust_strings(src.read_text()):
            if ("jobs" in s or "steps" in s) and ":" in s and len(s) < 4000:
                docs.append(s)
    for i, doc in enumerate(dict.fromkeys(docs)):
        # The first byte picks the plan options (see fuzz_targets/pipeline.rs).
        put("pipeline", bytes([i % 128]) + doc.encode())


def tar_of(entries, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in entries:
            info.mtime = 1700000000
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def entry(name, kind=tarfile.REGTYPE, data=b"", **kw):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = kw.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    for k, v in kw.items():
        setattr(info, k, v)
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def layers():
    base = [
        entry("./", tarfile.DIRTYPE),
        entry("bin/", tarfile.DIRTYPE),
        entry("bin/busybox", data=b"\x7fELF" + bytes(60), mode=0o755),
        entry("bin/sh", tarfile.SYMTYPE, linkname="busybox"),
        entry("bin/ls", tarfile.LNKTYPE, linkname="bin/busybox"),
        entry("etc/", tarfile.DIRTYPE),
        entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
        entry("etc/resolv.conf", tarfile.SYMTYPE, linkname="/run/resolv.conf"),
        entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
        entry("usr/bin/su", data=b"su", mode=0o4755, uid=0, gid=0),
        entry("home/user/", tarfile.DIRTYPE, uid=1000, gid=1000),
        entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        entry("run/fifo", tarfile.FIFOTYPE),
    ]
    put("unpack", tar_of(base))
    put("unpack", tar_of(base, tarfile.GNU_FORMAT))
    put("unpack", tar_of(base, tarfile.USTAR_FORMAT))
    # A second layer: whiteouts and an opaque directory.
    put(
        "unpack",
        tar_of(
            [
                entry("bin/.wh.ls"),
                entry("etc/", tarfile.DIRTYPE),
                entry("etc/.wh..wh..opq"),
                entry("etc/motd", data=b"top layer\n"),
                entry(".wh..wh.plnk/"),
            ]
        ),
    )
    # xattrs through PAX headers, a long name, later entries replacing earlier ones.
    x, _ = entry("usr/bin/ping", data=b"ping", mode=0o755)
    x.pax_headers = {
        "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12,
        "SCHILY.xattr.user.note": "hello",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
    }
    put(
        "unpack",
        tar_of(
            [
                (x, b"ping"),
                entry("a/" + "long-name-" * 20 + "end", data=b"long"),
                entry("a/file", data=b"one"),
                entry("a/file", tarfile.DIRTYPE),
                entry("a/file", data=b"two"),
            ]
        ),
    )
    # Hostile forms, each of which must be refused without writing outside.
    hostile = [
        [entry("../escape", data=b"x")],
        [entry("/abs/../../escape", data=b"x")],
        [entry("link", tarfile.SYMTYPE, linkname="../../outside"), entry("link/x", data=b"x")],
        [entry("link", tarfile.SYMTYPE, linkname="/"), entry("link/etc/x", data=b"x")],
        [entry("hard", tarfile.LNKTYPE, linkname="../../outside/canary")],
        [entry("hard", tarfile.LNKTYPE, linkname="/etc/passwd")],
        [entry("d/", tarfile.DIRTYPE), entry("d", tarfile.SYMTYPE, linkname=".."), entry("d/x", data=b"x")],
        [entry(".wh...", data=b"")],
        [entry("./", tarfile.DIRTYPE, mode=0o000, uid=4242)],
    ]
    for h in hostile:
        put("unpack", tar_of(h))
    put("unpack", b"")
    put("unpack", bytes(1024))


def protocol():
    # One selector byte per body type (see fuzz_targets/protocol.rs), then the body.
    bodies = {
        0: [
            {"token": "reg_x", "name": "r", "labels": ["gpu"], "isolations": ["container", "vm"], "concurrent": 2, "version": "0.1.0"},
            {"token": "reg_nope", "name": "x"},
        ],
        1: [{"wait_secs": 5.0}, {"wait_secs": 0.3}, {}, {"wait_secs": 1e300}, {"wait_secs": -1}],
        2: [
            {"status": "success", "checksum": "sha256:00", "log_size": 12,
             "steps": [{"name": "s1", "exit_code": 0, "signal": None, "oom_killed": False,
                        "timed_out": False, "cancelled": False, "duration_ms": 12}]},
            {"status": "failed", "failure_reason": "boom", "checksum": "", "log_size": 0},
        ],
        3: [
            {"pipeline": "jobs: {a: {steps: [{run: x}]}}", "file": ".runner.yml", "event": "push",
             "branch": "main", "vars": {"A": "b"}, "secrets": {"TOKEN": "value"}},
            {"plan": {"name": "test", "jobs": [{"id": "a", "name": "a", "matrix": {}, "needs": [],
                      "skipped": None, "allow_failure": False, "retry": 0, "timeout": 120,
                      "steps": [{"name": "s", "run": "true", "shell": "sh", "image": "host",
                                 "isolation": "container", "env": {}, "workdir": "/workspace",
                                 "timeout": 60, "network": "none", "resources": {},
                                 "continue_on_error": False, "secrets": []}]}]},
             "secrets": {}},
            {"plan": 5},
        ],
        4: [{"labels": ["linux"], "isolations": ["container"]}, {"isolations": ["chroot"]}],
        5: [{"name": "s", "exit_code": None, "signal": 9, "oom_killed": True, "timed_out": False,
             "cancelled": False, "duration_ms": 1}],
        6: [{"size": 6, "control": "running"}, {"error": "gap", "size": 6}],
    }
    for which, items in bodies.items():
        for b in items:
            put("protocol", bytes([which]) + json.dumps(b).encode())
        put("protocol", bytes([which]) + b"{not json")
    for r in ["0-9", "bytes 0-9", "bytes 0-9/*", " 0 - 9 ", "5-1", "x-y", "", "0-99",
              "10-14", "18446744073709551614-18446744073709551615"]:
        for held in [0, 10, 2**64 - 1]:
            put("protocol", bytes([7]) + struct.pack("<Q", held) + r.encode())


if __name__ == "__main__":
    pipelines()
    layers()
    protocol()
    for t in sorted(SEEDS.iterdir()):
        print(t.name, len(list(t.iterdir())))
