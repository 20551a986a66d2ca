"""Training history and the callback protocol (Keras names and semantics)."""


class Callback:
    """Base class: override any hook. ``self.model`` is set before on_train_begin."""

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_chunk_end(self, chunk, logs=None):
        pass


class History(Callback):
    """Per-epoch metrics: ``history["loss"][e]`` is epoch e's mean training loss."""

    def __init__(self):
        self.history = {}
        self.epoch = []
        self.params = {}
        self.interrupted = False

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self):
        keys = ", ".join(self.history)
        return f"History(epochs={len(self.epoch)}, keys=[{keys}])"
