"""byol_core: BYOL (Grill et al. 2020, arXiv 2006.07733) as a small PyTorch library plus
the six stage entry points of the pipeline: scan, ingest, pretrain, evaluate, export, embed.

This package never imports dagster or dvc; those drive it from the outside.
"""

__version__ = "0.1.0"
