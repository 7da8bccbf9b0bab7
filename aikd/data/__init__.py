"""Manifests, pairs files, image reading and data validation."""
