"""Speed, memory and compile-time benchmarks of tadiffeq (against the paper's PyTorch
reference where one exists). Run from the repository root as
`python -m benchmarks.<name>`; see benchmarks/README.md.
"""
