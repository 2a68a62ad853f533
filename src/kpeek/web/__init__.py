"""The local web page of ``kpeek serve``."""
