"""Vigil's shared ground and its command line: what serving and monitoring both read, and what joins them.

Leaf modules (imported by serving and monitoring, importing neither): files, tensors,
repository, messages, tokens, web, aliases, audit, model_ops, alias_board. Top modules (may
import both, never imported by them): cli, models_cli, gate_cli, model_client, publishing,
model_gate, examples, profiles, dashboards, panels, lifecycle.
"""
