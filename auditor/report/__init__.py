"""Stage 5, report: findings rendered for people (terminal table, Markdown, HTML) and machines (JSON)."""
