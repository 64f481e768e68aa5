"""Loading policies (directory, installed weights package, GGUF) and the quickstart's tiny model."""
