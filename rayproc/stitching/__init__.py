"""Sliding-window inference in three pieces: placement, importance weights, merging."""
