"""Prompts for the SegVol-style model: request parsing, geometry, dense encoding, text, simulation."""
