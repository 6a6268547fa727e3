"""Image attack probes of the classifier family (``clean``, ``attack``, ``curve``: one file each) and the family's
unit context (``context.py``)."""
