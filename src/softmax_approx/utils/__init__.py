"""Small shared utilities: errors, results.json, provenance, config validation."""
