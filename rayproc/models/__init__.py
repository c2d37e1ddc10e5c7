"""Neural networks (pure torch) and the model-directory artefact."""
