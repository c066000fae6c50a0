"""Stand-in for the users' step-1 sieve worker: reads the payload JSON, the
draw history at ``dataset_path`` and writes a result recording what it read
(sha256 of the bytes and the path), so a test can check the bytes it got."""

import hashlib
import json
import os
import sys

with open(sys.argv[1]) as f:
    payload = json.load(f)
with open(payload["dataset_path"], "rb") as f:
    data = f.read()
out = {"job_id": payload["job_id"], "read": {payload["dataset_path"]: hashlib.sha256(data).hexdigest()},
       "seeds": [payload["seed_start"], payload["seed_end"]]}
tmp = payload["output_file"] + ".tmp"
with open(tmp, "w") as f:
    json.dump(out, f)
os.replace(tmp, payload["output_file"])
