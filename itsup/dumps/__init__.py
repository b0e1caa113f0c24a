"""Database dumps: plan, engines, running them beside the file archive."""
