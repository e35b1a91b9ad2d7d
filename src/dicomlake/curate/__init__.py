"""Curation: range rules, normalisers, vocabulary mapping."""
