"""Where cluster objects come from: manifest files (dry run) or a live API server."""
