"""casd's benchmark: measured speed against the machine's limits and against peers, in one run.

``python -m bench`` (see bench/README.md) starts casd, and the peers found on the machine, on
loopback ports, runs bounded workloads against each side by side, prints a table and writes
``bench-results.json`` into ``--results DIR`` (default: the working directory). It runs from
the repository and is not part of the wheel.
"""
