"""Realistic benchmark inputs: what the users' scorer trials read."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class InputSet:
    npz: str
    train: str
    holdout: str
    big: str | None = None

    @property
    def paths(self) -> list[str]:
        return [p for p in (self.npz, self.train, self.holdout, self.big) if p]

    def sizes(self) -> dict[str, int]:
        return {os.path.basename(p): os.path.getsize(p) for p in self.paths}

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes().values())


def _write_npz(path: str, target_bytes: int, rng_seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    # seeds u32 + forward/reverse match rates f32 + score f64 = 20 bytes a survivor
    n = max(16, (target_bytes - 1200) // 20)
    np.savez(
        path,
        seeds=rng.integers(0, 2**32, size=n, dtype=np.uint32),
        forward=rng.random(n, dtype=np.float32),
        reverse=rng.random(n, dtype=np.float32),
        scores=rng.random(n),
    )
    if not path.endswith(".npz"):  # numpy appends .npz
        os.replace(path + ".npz", path)


def _history(target_bytes: int, rnd: random.Random, start: int = 0) -> list[dict]:
    out: list[dict] = []
    size = 2
    i = start
    while size < target_bytes:
        rec = {"draw": i, "value": rnd.getrandbits(32), "date": f"20{10 + i // 365 % 90:02d}-"
               f"{1 + i // 31 % 12:02d}-{1 + i % 28:02d}", "session": rnd.choice(["midday", "evening"])}
        size += len(json.dumps(rec)) + 2
        out.append(rec)
        i += 1
    return out


def _write_json(path: str, doc: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)


def _write_big(path: str, target_bytes: int, rnd: random.Random) -> None:
    """A survivors JSON of ``target_bytes`` (a list of records), written in chunks."""
    written = 1
    chunk_n = 20000
    first = True
    with open(path, "w", encoding="utf-8") as f:
        f.write("[")
        while written < target_bytes:
            recs = [{"seed": rnd.getrandbits(32), "forward_rate": round(rnd.random(), 6),
                     "reverse_rate": round(rnd.random(), 6), "score": round(rnd.random(), 6),
                     "skip": rnd.randint(0, 50)} for _ in range(chunk_n)]
            text = json.dumps(recs)[1:-1]
            if not first:
                text = ", " + text
            first = False
            f.write(text)
            written += len(text)
        f.write("]")


def make_inputs(directory: str, *, npz_kb: float = 230, train_kb: float = 27, holdout_kb: float = 7,
                big_mb: float = 0, seed: int = 20240501, name_prefix: str = "") -> InputSet:
    """Write the survivors ``.npz``, the two histories and optionally a large JSON."""
    os.makedirs(directory, exist_ok=True)
    rnd = random.Random(seed)
    npz = os.path.join(directory, f"{name_prefix}bidirectional_survivors.npz")
    train = os.path.join(directory, f"{name_prefix}train_history.json")
    holdout = os.path.join(directory, f"{name_prefix}holdout_history.json")
    _write_npz(npz, int(npz_kb * 1024), seed)
    _write_json(train, _history(int(train_kb * 1024), rnd))
    _write_json(holdout, _history(int(holdout_kb * 1024), rnd, start=100000))
    big = None
    if big_mb and big_mb > 0:
        big = os.path.join(directory, f"{name_prefix}bidirectional_survivors.json")
        _write_big(big, int(big_mb * 1024 * 1024), rnd)
    return InputSet(npz=npz, train=train, holdout=holdout, big=big)


def age_files(paths: list[str], seconds: float = 60.0) -> None:
    """Set mtimes into the past, then wait until the files' ctimes (which
    cannot be set back) leave the hash memo's racy window, so the memo
    trusts them: it refuses files changed in the last couple of seconds."""
    import time

    from ..memo import RACY_WINDOW

    t = time.time() - seconds
    newest = 0
    for p in paths:
        os.utime(p, (t, t))
        newest = max(newest, os.stat(p).st_ctime_ns)
    wait_ns = newest + int(RACY_WINDOW * 1e9) - time.time_ns()
    if wait_ns > 0:
        time.sleep(wait_ns / 1e9 + 0.01)
