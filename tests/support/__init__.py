"""Test helpers: talking to a real TorchServe and reading what it logged and exported."""
