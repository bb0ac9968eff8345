"""Speed and memory benchmarks: scripts that print ratios against a baseline run side by side.

Run them as scripts (``python benchmarks/bench_inference.py --help``); see README.md.
"""
