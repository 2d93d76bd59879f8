"""Writes friedman1.csv: Friedman's regression problem #1 (Friedman, 1991), the study's "user CSV".

y = 10 sin(π x1 x2) + 20 (x3 − 0.5)² + 10 x4 + 5 x5 + N(0, 1), x ~ U[0, 1]^10 (x6–x10 are noise
features); 2,000 rows, seed 0, target column "y". Run from the repository root:
    python studies/data/make_friedman1.py
"""
from pathlib import Path

import numpy as np

rng = np.random.default_rng(0)
n = 2000
x = rng.uniform(size=(n, 10))
y = (10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
     + rng.normal(size=n))
out = Path(__file__).with_name("friedman1.csv")
header = ",".join([f"x{i + 1}" for i in range(10)] + ["y"])
np.savetxt(out, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6f")
print(f"wrote {out} ({n} rows)")
