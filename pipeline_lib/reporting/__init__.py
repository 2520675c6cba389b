"""Summary rows, paper tables and figures built from the workflow's results."""
