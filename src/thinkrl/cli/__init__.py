"""The `thinkrl` command line: one file per command."""
