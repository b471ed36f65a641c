"""Benchmarks, evaluation harnesses and the campaign simulation.

The product (``segloop``) never imports this package; it imports the product.
"""
