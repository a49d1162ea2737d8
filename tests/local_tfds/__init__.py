"""TFDS datasets for tests, built from local arrays only.

A builder lives in a sub-module of a package, as the datasets of the TFDS
catalogue do, so that preparing it takes the same code path.
"""
