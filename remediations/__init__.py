"""Stage 6, apply: turn findings into reviewable plans and apply them to live systems, guarded."""
