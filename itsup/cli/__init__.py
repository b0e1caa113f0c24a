"""The `itsup` command: parse, call an action, render. Nothing here moves bytes."""
