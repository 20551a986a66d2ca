"""What an engine gets of a model: the layout of the flat parameters, the codes of its
activations and loss, the dropout rates, the parameters and which layers train."""
from dataclasses import dataclass

import numpy as np

from .kernels.tuning import UPDATE_BLOCK


CACHE_LINE = 64


def aligned_zeros(shape, dtype):
    """Zeros whose data starts on a cache line (NumPy guarantees 16 bytes). The training
    team's members write neighbouring rows and spans of these buffers; spans cut at whole
    vectors then never share a line (a line that two cores both write moves back and
    forth between them), and no vector load straddles two lines."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.zeros(n * dtype.itemsize + CACHE_LINE, dtype=np.uint8)
    skip = -raw.ctypes.data % CACHE_LINE
    return raw[skip: skip + n * dtype.itemsize].view(dtype).reshape(shape)


class Layout:
    """Offsets of each layer's W and b inside the flat parameter vector.

    Layer ``l`` (0-based) maps ``sizes[l]`` inputs to ``sizes[l+1]`` outputs; its W is stored
    row-major (n_in, n_out) at ``poff[l]`` and its bias follows. ``coff`` is the running sum
    of the widths, used to place each layer's rows in the flat row buffers.
    """

    def __init__(self, sizes):
        self.sizes = np.asarray(sizes, dtype=np.int64)
        n_layers = len(sizes) - 1
        self.poff = np.zeros(n_layers, dtype=np.int64)
        o = 0
        for l in range(n_layers):
            self.poff[l] = o
            o += int(sizes[l]) * int(sizes[l + 1]) + int(sizes[l + 1])
        self.n_params = o
        self.coff = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.row_width = int(self.coff[-1])

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    def w_slice(self, l):
        o = int(self.poff[l])
        return slice(o, o + int(self.sizes[l]) * int(self.sizes[l + 1]))

    def b_slice(self, l):
        o = int(self.poff[l]) + int(self.sizes[l]) * int(self.sizes[l + 1])
        return slice(o, o + int(self.sizes[l + 1]))

    def layer_slice(self, l):
        return slice(int(self.poff[l]), self.b_slice(l).stop)

    def trainable_spans(self, trainable):
        """(start, stop) spans of the trainable layers' parameters, adjacent layers merged."""
        spans = []
        for l in range(self.n_layers):
            if not trainable[l]:
                continue
            s = self.layer_slice(l)
            if spans and spans[-1][1] == s.start:
                spans[-1][1] = s.stop
            else:
                spans.append([s.start, s.stop])
        return np.array(spans, dtype=np.int64).reshape(-1, 2)

    def update_blocks(self, trainable):
        """The trainable spans cut into (start, stop) blocks of the optimizer pass."""
        blocks = [(lo, min(lo + UPDATE_BLOCK, stop))
                  for start, stop in self.trainable_spans(trainable)
                  for lo in range(int(start), int(stop), UPDATE_BLOCK)]
        return np.array(blocks, dtype=np.int64).reshape(-1, 2)


@dataclass(eq=False)
class Network:
    """The network record an engine trains and runs (never the model itself).

    ``acts`` holds one activation code per dense layer (the last is unused: the loss fixes
    the output activation), ``drop`` one dropout rate per dense layer (0 after the last
    hidden one), ``trainable`` one flag per dense layer; ``params`` is the flat parameter
    vector on a cache line (layout in ``layout``), shared with the model: an engine that
    keeps a copy elsewhere (a device) brings it back in ``params_to_host``.
    """
    layout: Layout
    acts: np.ndarray
    loss: int
    drop: np.ndarray
    params: np.ndarray
    trainable: np.ndarray

    @property
    def dtype(self):
        return self.params.dtype

    @property
    def sizes(self):
        return self.layout.sizes

    @property
    def n_params(self):
        return self.layout.n_params
