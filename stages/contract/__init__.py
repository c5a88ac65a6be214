"""The artifact contract: stage folders, manifests, hashes, lineage and time ledgers."""
