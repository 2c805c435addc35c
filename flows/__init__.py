"""ModelPress flows and the command-line entry point."""
