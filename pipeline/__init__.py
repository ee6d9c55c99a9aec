"""Bytes on disk → batches of M views on the training device."""
