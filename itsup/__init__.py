"""itsup: backup and disaster recovery for self-hosted Docker Compose + Traefik hosts."""

__version__ = "0.1.0"
