"""Edge stage: not built yet. See the project issues."""
