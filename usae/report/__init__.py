"""Stage 6: the static report of a run (summary page, concept explorer)."""
