"""The quickstart's trial with the standard library only, for images that have nothing but Python (the
Kubernetes examples run it in ``python:3.11-slim``, which has no numpy): logistic regression by
mini-batch gradient descent on synthetic data. Unmodified NNI trial code (``import nni``: nni-ts provides
a light ``nni`` module when NNI itself is not installed)."""

import math
import random

import nni


def dot(u, v):
    return sum(u[i] * v[i] for i in range(len(u)))


def make_data(seed=0, n=1000, d=10):
    rng = random.Random(seed)
    w_true = [rng.gauss(0, 1) for _ in range(d)]
    rows = []
    for _ in range(n):
        x = [rng.gauss(0, 1) for _ in range(d)]
        logit = dot(w_true, x) + 0.5 * rng.gauss(0, 1)
        rows.append((x, 1.0 if logit > 0 else 0.0))
    split = int(n * 0.8)
    return rows[:split], rows[split:]


def accuracy(w, b, rows):
    return sum((dot(w, x) + b > 0) == (y > 0.5) for x, y in rows) / len(rows)


def main():
    params = {"lr": 0.1, "batch_size": 64, "l2": 1e-4, "epochs": 10}
    params.update(nni.get_next_parameter() or {})
    train, val = make_data()
    d = len(train[0][0])
    w, b = [0.0] * d, 0.0
    rng = random.Random(1)
    acc = 0.0
    for _epoch in range(int(params["epochs"])):
        rng.shuffle(train)
        for start in range(0, len(train), int(params["batch_size"])):
            batch = train[start : start + int(params["batch_size"])]
            gw, gb = [0.0] * d, 0.0
            for x, y in batch:
                z = dot(w, x) + b
                p = 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))
                for i in range(d):
                    gw[i] += (p - y) * x[i]
                gb += p - y
            n = len(batch)
            w = [w[i] - params["lr"] * (gw[i] / n + params["l2"] * w[i]) for i in range(d)]
            b -= params["lr"] * gb / n
        acc = accuracy(w, b, val)
        nni.report_intermediate_result(acc)
    nni.report_final_result(acc)


if __name__ == "__main__":
    main()
