"""lookalike helpers: images -> embeddings store -> index -> neighbours -> grids and reports.

One module per step; the notebooks in ``notebooks/`` call these in order.
"""
__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries notebook output.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
