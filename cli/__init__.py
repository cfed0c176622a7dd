"""The `ugafl` command line: one thin subcommand per stage."""
