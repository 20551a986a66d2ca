"""An autoencoder on the 8x8 digits: fit(X, X) with mse, then the 8-unit code via transform."""
import numpy as np
from sklearn.datasets import load_digits

import fastbp


def main(epochs=40):
    X = (load_digits().data / 16.0).astype(np.float32)
    ae = fastbp.MLP([64, 32, 8, 32, 64], activation=["relu", "identity", "relu"], loss="mse",
                    seed=0)
    hist = ae.fit(X, X, epochs=epochs, batch_size=32, lr=2e-3)
    code = ae.transform(X, layer=1)           # dense layer 1 (0-based) is the 8-unit code
    recon = ae.predict(X)
    mse = float(np.mean((recon - X) ** 2))
    baseline = float(np.mean((X - X.mean(0)) ** 2))
    print(f"code shape {code.shape}; reconstruction mse {mse:.4f} vs mean-image {baseline:.4f}")
    print(f"loss {hist.history['loss'][0]:.4f} -> {hist.history['loss'][-1]:.4f}")
    return mse, baseline


if __name__ == "__main__":
    main()
