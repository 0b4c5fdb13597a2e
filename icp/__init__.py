"""ICP server: every byte of I/O lives here."""
