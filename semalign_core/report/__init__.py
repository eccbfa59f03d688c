"""Tables and figures from results/ alone, beside the published numbers."""
