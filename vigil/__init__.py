"""Vigil's shared ground and its command line: what serving and monitoring both read, and what joins them.

Leaf modules (imported by serving and monitoring, importing neither): files, tensors,
repository, messages, tokens, web. Top modules (may import both): cli, examples, profiles.
"""
