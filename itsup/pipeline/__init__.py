"""The streaming stages: walk -> tar -> compress -> encrypt -> hash, and back."""
