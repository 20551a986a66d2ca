"""Handwritten digit recognition (OCR) on scikit-learn's 8x8 digits, with a loss plot."""
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import fastbp


def main(epochs=30, plot=None):
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, digits.target, test_size=0.25,
                                          stratify=digits.target, random_state=0)
    net = fastbp.MLP([64, 128, 64, 10], activation="relu", loss="cross_entropy", seed=0)
    hist = net.fit(Xtr, ytr, epochs=epochs, batch_size=32, optimizer="adam", lr=1e-3,
                   validation_split=0.1, verbose=2)
    acc = net.evaluate(Xte, yte)["accuracy"]
    print(f"test accuracy: {acc:.4f}")
    if plot:
        fastbp.plot_history(hist, plot)
    return acc


if __name__ == "__main__":
    main(plot=sys.argv[1] if len(sys.argv) > 1 else None)
