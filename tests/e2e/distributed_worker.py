"""Stand-in for the users' distributed_worker.py: reads job_<id>.json and runs
``python <script> <args...>`` in the current directory (the node's
script_path). Only the standard library: nodes have nothing else."""

import json
import subprocess
import sys

with open(sys.argv[1]) as f:
    job = json.load(f)
rc = subprocess.call([sys.executable, job["script"], *[str(a) for a in job["args"]]])
sys.exit(rc)
