"""hvadam-bench: the benchmark and reproduction suite of hvadam."""
