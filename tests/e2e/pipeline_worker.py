"""Stand-in for the users' step 2.5 trial worker and step 3 scorer, in their
argument shapes (standard library only: it runs on the nodes).

Step 2.5: ``SURVIVORS TRAIN HOLDOUT TRIAL_ID PARAMS_JSON --optuna-study-name N
--optuna-study-db URL``; writes ``results/trial_<TRIAL_ID>.json``.
Step 3: ``--seeds-file F --train-history F --holdout-history F --output-file
OUT [numbers and flags]``.

Like the real worker it reads ``optimal_window_config.json`` from the
survivors file's directory when it exists. The output records, for every
file read, the path it was given, the path it really opened and a sha256 of
the bytes, so a test can tell RAM copies, SSD files and stale preload copies
apart. Exits 1 if an input cannot be read, as a real worker would crash."""

import hashlib
import json
import os
import sys

INPUT_FLAGS = ("--seeds-file", "--train-history", "--holdout-history")


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    return {"real": os.path.realpath(path), "sha256": hashlib.sha256(data).hexdigest()}


def main(argv):
    inputs, positional, out = [], [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--output-file":
            out = argv[i + 1]
            i += 2
        elif a in INPUT_FLAGS:
            inputs.append(argv[i + 1])
            i += 2
        elif a.startswith("--optuna-"):
            i += 2
        elif a.startswith("-"):
            i += 1
        else:
            positional.append(a)
            i += 1
    step25 = out is None
    if step25:
        inputs = positional[:3]
        json.loads(positional[4])  # the inline parameters
        out = f"results/trial_{positional[3]}.json"
    report = {"cwd": os.getcwd(), "inputs": {p: read(p) for p in inputs}}
    if step25:  # beside the survivors file
        cfg = os.path.join(os.path.dirname(inputs[0]), "optimal_window_config.json")
        if os.path.exists(cfg):
            report["window_config"] = {"path": cfg, **read(cfg)}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1:])
