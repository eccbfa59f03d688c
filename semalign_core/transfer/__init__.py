"""The transfer-method registry: SemAlign and every baseline by name."""
