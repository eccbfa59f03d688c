"""One module per notebook, and the per-profile budgets they share."""
