"""Benchmarks of dicomlake, each printing figures against a named peer (see DESIGN.md)."""
