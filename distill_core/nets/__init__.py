"""Networks and how their forward passes run: ``networks`` (the ConvNet family and the others of the
cross-architecture checks, ``NetConfig``), ``precision`` (bf16 autocast, compiled networks)."""
