"""SemAlign: attribution, layer pairing, supervision from the source, frontier training."""
