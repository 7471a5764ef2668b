"""lsjob: MiniGoogLeNet on CIFAR-10 with label smoothing, as a batch job."""

__version__ = "0.1.0"
