#!/usr/bin/env python3
"""Finds which functions of a `wisp` binary a server runs, by counting.

Puts a uprobe (the kernel's breakpoint on a user-space address, through
tracefs) on the first instruction of every function in the binary's
symbol table, runs `workload.py` with that binary, reads how often each
probe fired, removes the probes, and prints the names of the functions that
ran, most calls first. Needs root and tracefs (mounted here if it is not).

Usage: profile.py WISP_BINARY HELLO_WASM > link-order.txt
"""

import os
import shutil
import subprocess
import sys
import tempfile

TRACEFS = "/sys/kernel/tracing"
GROUP = "wisp_link_order"
HERE = os.path.dirname(os.path.abspath(__file__))


def functions(binary):
    """(file offset, name) of each function with code in `binary`."""
    phdrs = subprocess.run(["readelf", "-lW", binary], capture_output=True, text=True, check=True)
    segments = []
    for line in phdrs.stdout.splitlines():
        p = line.split()
        if p[:1] == ["LOAD"] and "E" in p[6:8]:
            offset, vaddr, size = int(p[1], 16), int(p[2], 16), int(p[4], 16)
            segments.append((vaddr, vaddr + size, vaddr - offset))
    nm = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True)
    found = {}
    for line in nm.stdout.splitlines():
        p = line.split()
        if len(p) != 4 or p[2] not in "tTwW" or int(p[1], 16) == 0:
            continue
        addr = int(p[0], 16)
        for start, end, delta in segments:
            if start <= addr < end:
                found.setdefault(addr - delta, p[3])
    return sorted(found.items())


def write(path, text):
    """One write to a tracefs file (Python's buffered files seek, which
    tracefs refuses)."""
    fd = os.open(f"{TRACEFS}/{path}", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def clear():
    """Removes this script's probes: all at once when they are the only
    uprobes (each single removal waits for an RCU grace period, minutes for
    thirty thousand), else one by one."""
    if os.path.isdir(f"{TRACEFS}/events/{GROUP}"):
        write(f"events/{GROUP}/enable", "0")
    with open(f"{TRACEFS}/uprobe_events") as f:
        events = [l.split()[0].split(":", 1)[1] for l in f if l.strip()]
    ours = [e for e in events if e.startswith(f"{GROUP}/")]
    if ours and len(ours) == len(events):
        fd = os.open(f"{TRACEFS}/uprobe_events", os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        return
    for event in ours:
        write("uprobe_events", f"-:{event}\n")


def main():
    binary, hello = os.path.abspath(sys.argv[1]), sys.argv[2]
    if not os.path.exists(f"{TRACEFS}/uprobe_events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
    # A first run without probes compiles `hello` into a cache that the
    # counted run then uses, so that no compiler process (the same binary)
    # adds its functions to the counts.
    cache = tempfile.mkdtemp(prefix="wisp-link-order-cache-")
    subprocess.run(
        [sys.executable, f"{HERE}/workload.py", binary, hello, "--light", "--cache-dir", cache],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    clear()
    names = {}
    probes = 0
    try:
        for i, (offset, name) in enumerate(functions(binary)):
            try:
                write("uprobe_events", f"p:{GROUP}/f{i} {binary}:{offset:#x}\n")
                names[f"f{i}"] = name
                probes += 1
            except OSError:
                pass  # an instruction the kernel cannot probe; the function stays unordered
        write(f"events/{GROUP}/enable", "1")
        print(f"{probes} probes; running the workload", file=sys.stderr)
        subprocess.run(
            [sys.executable, f"{HERE}/workload.py", binary, hello, "--light", "--cache-dir", cache],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        hits = []
        with open(f"{TRACEFS}/uprobe_profile") as f:
            for line in f:
                p = line.split()
                if len(p) == 3 and p[1] in names and int(p[2]) > 0:
                    hits.append((-int(p[2]), names[p[1]]))
    finally:
        clear()
        shutil.rmtree(cache, ignore_errors=True)
    for _, name in sorted(hits):
        print(name)
    print(f"{len(hits)} of {probes} functions ran", file=sys.stderr)


if __name__ == "__main__":
    main()
