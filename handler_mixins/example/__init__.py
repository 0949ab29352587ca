"""The example model: a tiny TorchScript classifier, its handler, and the archive builder."""
