"""The torch engine of wsn: no typer or rich here; progress goes out through callbacks."""
