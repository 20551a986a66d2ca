"""Fine-tuning: train every layer on digits 0-4, then freeze all but the last and adapt to 5-9.

Frozen layers keep their weights bit for bit and cost no gradient work.
"""
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastbp


def main(epochs=20):
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    y = d.target
    first, second = y < 5, y >= 5
    net = fastbp.MLP([64, 128, 64, 10], seed=0)
    net.fit(X[first], y[first], epochs=epochs, batch_size=32)

    Xtr, Xte, ytr, yte = train_test_split(X[second], y[second], test_size=0.5,
                                          stratify=y[second], random_state=0)
    before = net.get_weights()
    net.freeze([0, 1])                        # only the output layer trains now
    net.fit(Xtr, ytr, epochs=epochs, batch_size=32, lr=3e-3)
    after = net.get_weights()
    unchanged = all(np.array_equal(a, b) for a, b in zip(before[:4], after[:4]))
    acc = net.evaluate(Xte, yte)["accuracy"]
    print(f"hidden layers unchanged: {unchanged}; accuracy on 5-9 after fine-tuning the last "
          f"layer: {acc:.3f}")
    return unchanged, acc


if __name__ == "__main__":
    main()
