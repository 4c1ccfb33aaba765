"""wsn: forget-free continual learning with Winning SubNetworks, one task per command."""

__version__ = "0.2.0"
