"""SemAlign across vocabularies: token alignment, a vocabulary bridge, cross-vocabulary losses."""
