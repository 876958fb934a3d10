"""siammae: Siamese Masked Autoencoders for video correspondence, from video shards to DAVIS J&F.

Importing the package is cheap (no torch): the CLI answers ``--help`` and ``--version`` instantly.
"""

__version__ = "0.1.0"
