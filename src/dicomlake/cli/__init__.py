"""Command-line interface: one typer app, a module per verb group."""
