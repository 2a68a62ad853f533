from kpeek.cli import entry

entry()
