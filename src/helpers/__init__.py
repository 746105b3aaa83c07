"""lookalike helpers: images -> embeddings store -> index -> neighbours -> grids and reports.

One module per step; the notebooks in ``notebooks/`` call these in order.
"""
__version__ = "0.1.0"
