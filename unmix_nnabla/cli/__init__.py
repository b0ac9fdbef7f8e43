"""The command lines: every parser (args), the work of the small CLIs (commands), and the installed
console commands (main)."""
