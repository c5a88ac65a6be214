"""What a researcher reads after the stages: multi-seed statistics and a run report."""
