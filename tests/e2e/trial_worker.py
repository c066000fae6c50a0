"""A worker in the users' shapes: reads every input it is given (positional,
``--flag value``, ``--flag=value``; bare names relative to its cwd), plus the
companion ``optimal_window_config.json`` next to the survivors file, and
writes a JSON report of what it read, where from, and a digest of the bytes.

Standard library only (it runs on the nodes). Exits 1 if any input is
unreadable, like a real worker would crash."""

import hashlib
import json
import os
import sys


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv):
    out = None
    inputs = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--output-file", "-o"):
            out = argv[i + 1]
            i += 2
            continue
        if a.startswith("--output-file="):
            out = a.split("=", 1)[1]
        elif a.startswith("--") and "=" in a:
            inputs.append(a.split("=", 1)[1])
        elif not a.startswith("-") and (a.endswith(".json") or a.endswith(".npz")):
            inputs.append(a)
        i += 1
    report = {"cwd": os.getcwd(), "inputs": {}}
    for p in inputs:
        report["inputs"][p] = {"sha256": digest(p), "real": os.path.realpath(p)}
        if p.endswith(".npz"):
            comp = os.path.join(os.path.dirname(p), "optimal_window_config.json")
            report["inputs"][p]["companion"] = {"path": comp, "sha256": digest(comp)}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1:])
