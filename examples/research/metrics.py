"""Summary statistics and a least-squares fit of the bundled measurements, with numpy."""

import json
import sys

import numpy as np

data = np.genfromtxt(sys.argv[1], delimiter=",", names=True)
x, y = data["dose"], data["response"]
slope, intercept = np.polyfit(x, y, 1)
residuals = y - (slope * x + intercept)
metrics = {
    "n": int(x.size),
    "response_mean": round(float(y.mean()), 6),
    "response_std": round(float(y.std(ddof=1)), 6),
    "fit": {"slope": round(float(slope), 6), "intercept": round(float(intercept), 6),
            "rmse": round(float(np.sqrt(np.mean(residuals ** 2))), 6)},
    "numpy": np.__version__,
}
print(json.dumps(metrics, indent=2, sort_keys=True))
