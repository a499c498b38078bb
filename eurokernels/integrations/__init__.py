"""Integrations of the eurokernels ops into training frameworks.

  eurokernels.integrations.transformers   Hugging Face transformers causal LMs (apply / revert)

Each integration imports its framework lazily (``import eurokernels`` never needs it); install the framework through
the matching extra, e.g. ``pip install eurokernels[hf]``.
"""
