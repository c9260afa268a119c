"""What the user sees and types: commands, rendering, the REPL and line mode."""
