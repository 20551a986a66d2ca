"""Regression (California-like synthetic data) with early stopping on a validation split."""
from sklearn.datasets import make_friedman1
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import fastbp
from fastbp.callbacks import EarlyStopping


def main(epochs=300):
    X, y = make_friedman1(n_samples=3000, n_features=8, noise=0.5, random_state=0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
    sx = StandardScaler().fit(Xtr)
    mu, sd = ytr.mean(), ytr.std()
    net = fastbp.MLP([8, 64, 64, 1], activation="tanh", loss="mse", seed=0)
    stop = EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)
    hist = net.fit(sx.transform(Xtr), (ytr - mu) / sd, epochs=epochs, batch_size=32,
                   lr=1e-3, validation_split=0.2, callbacks=[stop])
    r2 = net.evaluate(sx.transform(Xte), (yte - mu) / sd)["r2"]
    print(f"stopped after {len(hist.epoch)} of {epochs} epochs (best epoch {stop.best_epoch}); "
          f"test R^2 {r2:.3f}")
    return len(hist.epoch), r2


if __name__ == "__main__":
    main()
