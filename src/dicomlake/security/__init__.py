"""Security checks with no policy of their own: executable preambles, minimum safe versions."""
