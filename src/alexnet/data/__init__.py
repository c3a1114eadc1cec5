"""Data: find images, prepare them once, read and augment them fast."""
