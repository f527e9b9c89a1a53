"""Vigil monitoring: drift, data quality and latency statistics from sampled live traffic."""
