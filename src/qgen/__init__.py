"""qgen: a reproducibility workflow for the generalization of quantized neural networks.

The package is imported by the Snakemake workflow at parse time, so this module stays light:
it must not import torch.
"""

__version__ = "0.1.0"
