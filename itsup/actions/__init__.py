"""The verbs of itsup as plain functions: no terminal, no argument parsing."""
