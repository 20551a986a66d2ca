"""Keras-style progress: verbose "auto" (a bar on a terminal), 0, 1 (bar) or 2 (line/epoch)."""
import sys

from .errors import ConfigError


def _metrics(logs):
    return " - ".join(f"{k}: {v:.4g}" for k, v in logs.items() if k != "lr")


class Progress:
    def __init__(self, verbose, epochs, n_rows, stream=None):
        if verbose not in ("auto", 0, 1, 2) or isinstance(verbose, bool):
            raise ConfigError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
        self.stream = stream or sys.stderr
        if verbose == "auto":
            verbose = 1 if getattr(self.stream, "isatty", lambda: False)() else 0
        self.verbose = verbose
        self.epochs = epochs
        self.n_rows = n_rows
        self.bar = None
        self._epoch_rows = 0   # rows of the current epoch already shown

    def chunk(self, rows_done, running_loss):
        if self.verbose != 1:
            return
        if self.bar is None:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.epochs * self.n_rows, unit="sample", unit_scale=True,
                            file=self.stream, dynamic_ncols=True, leave=True)
        self.bar.update(rows_done - self._epoch_rows)
        self._epoch_rows = rows_done
        self.bar.set_postfix(loss=f"{running_loss:.4g}", refresh=False)

    def epoch_end(self, epoch, logs):
        self._epoch_rows = 0
        if self.verbose == 2:
            print(f"Epoch {epoch + 1}/{self.epochs} - {_metrics(logs)}", file=self.stream,
                  flush=True)
        elif self.verbose == 1 and self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}")
            post = {k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "val_loss",
                                                                    "samples_per_s")}
            self.bar.set_postfix(post)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
