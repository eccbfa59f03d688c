"""Model access every method uses: layers, norms and heads (surgery), hidden-state capture
(nethook), semantic bases (semantics), representation similarity (cka)."""
