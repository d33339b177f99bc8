"""The ``traitlens`` command: one subcommand per pipeline stage."""
