"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012), faithful to the paper and fast today."""

__version__ = "0.1.0"
