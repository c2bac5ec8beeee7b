"""The measurement lab: benchmarks, the PyTorch comparison and reference, the memory probe and the
experiments. The only room of the package that imports torch (lazily, as an optional extra); nothing
in the core library imports this package.

- :mod:`cllm.lab.bench`: ``python -m cllm bench``, training-step speed against the matmul peak
- :mod:`cllm.lab.compare_torch`: ``bench --compare torch``, cllm next to PyTorch in one process
- :mod:`cllm.lab.torch_reference`: the same model written in PyTorch, for the parity tests
- :mod:`cllm.lab.memory_probe`: peak memory of a training run in a fresh interpreter
- :mod:`cllm.lab.bench_optim`: AdamW's update alone, plain against chunked
- :mod:`cllm.lab.lattice_experiment`, :mod:`cllm.lab.stats`: ``python -m cllm experiment lattice``
- :mod:`cllm.lab.modular`, :mod:`cllm.lab.grokking`: ``python -m cllm experiment grokking`` (a op b mod m,
  learned against clock embeddings)
"""
