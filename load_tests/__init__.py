"""Load generators and benchmarks for Vigil; each script prints a table and writes a JSON report."""
