"""The tamper-evident audit log: Merkle trees, checkpoints, receipts, sealing, export."""
