"""A small, real trial: logistic regression trained by mini-batch gradient descent on synthetic data.

It is unmodified NNI trial code: it reads its hyper-parameters with ``nni.get_next_parameter()``,
reports the validation accuracy after every epoch and the final accuracy at the end. It needs numpy
and nothing else (nni-ts provides a light ``nni`` module when NNI itself is not installed).
"""

import nni
import numpy as np


def make_data(seed=0, n=2000, d=20):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    logits = x @ w_true + 0.5 * rng.normal(size=n)
    y = (logits > 0).astype(float)
    split = int(n * 0.8)
    return x[:split], y[:split], x[split:], y[split:]


def accuracy(w, b, x, y):
    return float(((x @ w + b > 0).astype(float) == y).mean())


def main():
    params = {"lr": 0.1, "batch_size": 64, "l2": 1e-4, "epochs": 10}
    params.update(nni.get_next_parameter() or {})
    x_train, y_train, x_val, y_val = make_data()
    rng = np.random.default_rng(1)
    w = np.zeros(x_train.shape[1])
    b = 0.0
    batch = int(params["batch_size"])
    acc = 0.0
    for _epoch in range(int(params["epochs"])):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            xb, yb = x_train[idx], y_train[idx]
            p = 1.0 / (1.0 + np.exp(-(xb @ w + b)))
            grad_w = xb.T @ (p - yb) / len(idx) + params["l2"] * w
            grad_b = float((p - yb).mean())
            w -= params["lr"] * grad_w
            b -= params["lr"] * grad_b
        acc = accuracy(w, b, x_val, y_val)
        nni.report_intermediate_result(acc)
    nni.report_final_result(acc)


if __name__ == "__main__":
    main()
