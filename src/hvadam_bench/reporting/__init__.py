"""What the studies' reports share: markdown tables, figures, and the rules that turn
measured numbers into rankings and verdicts."""
